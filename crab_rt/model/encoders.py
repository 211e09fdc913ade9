"""Speech and text encoder wrappers around Hugging Face models.

`SpeechEncoder` returns the encoder's last hidden state and a frame mask; for
WavLM it runs its own masked encoder loop that exports cleanly to ONNX and
TensorRT (DESIGN.md section 4): padded frames are zeroed by a multiply instead
of an in-place boolean index, the frame mask is `arange(F) < lengths`, and the
positional convolution's weight_norm can be folded before export. Other SSL
backbones (HuBERT, wav2vec 2.0) run their stock Hugging Face encoder. Whisper's
encoder (`whisper:<model>`, `crab_rt.model.whisper_encoder`) takes its log-mel
front end from that module and runs its layers with a key padding mask.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from crab_rt.errors import ConfigError
from crab_rt.model.presets import RANDOM_PREFIX, preset_config
from crab_rt.model.whisper_encoder import (
    WHISPER_HOP,
    WHISPER_PREFIX,
    LogMel,
    load_whisper_encoder,
    whisper_encoder_from_config,
    whisper_frame_lengths,
)

__all__ = ["SpeechEncoder", "TextEncoder", "load_hf_model", "hf_model_from_config"]


def hf_model_from_config(model_type: str, config: dict) -> nn.Module:
    """Build a randomly initialised Hugging Face model (for Whisper, its encoder alone); downloads nothing."""
    from transformers import AutoConfig, AutoModel

    if model_type == "whisper":
        return whisper_encoder_from_config(config)

    cfg = AutoConfig.for_model(model_type, **config)
    return AutoModel.from_config(cfg)


def load_hf_model(spec: str, kind: str) -> nn.Module:
    """Load `spec`: `random:<preset>`, `whisper:<model>` (Whisper's encoder from a CTranslate2
    model, offline), a local folder, or a hub id (pretrained; a Whisper model gives its encoder).

    Raises:
        ConfigError: unknown preset.
        BackendError: the weights cannot be loaded (offline without a cache, ...).
    """
    from crab_rt.errors import BackendError

    if spec.startswith(RANDOM_PREFIX):
        model_type, cfg = preset_config(spec[len(RANDOM_PREFIX):], kind)
        return hf_model_from_config(model_type, cfg)
    if spec.startswith(WHISPER_PREFIX):
        if kind != "speech":
            raise BackendError(f"{kind}_encoder: {spec!r}: Whisper's encoder is a speech encoder")
        return load_whisper_encoder(spec)
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(spec)
        return model.get_encoder() if model.config.model_type == "whisper" else model
    except (OSError, ValueError) as e:
        where = "folder" if Path(spec).exists() else "hub id"
        raise BackendError(f"cannot load {kind} encoder {where} {spec!r}: {str(e).splitlines()[0]}") from e


class SpeechEncoder(nn.Module):
    """Waveforms -> (hidden states [B, F, D], frame mask [B, F] bool)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.model_type = model.config.model_type
        self.hidden_size = int(model.config.hidden_size)
        self.log_mel = LogMel(int(model.config.num_mel_bins)) if self.model_type == "whisper" else None

    @property
    def splittable(self) -> bool:
        """Whether `frontend` / `backend` split the encoder for incremental encoding (not Whisper's: its log-mel
        floor is set by the utterance's loudest bin, so no front-end frame is final before the utterance ends)."""
        return self.log_mel is None

    def freeze_feature_encoder(self) -> None:
        """Freeze the CNN feature encoder (Whisper: its two convolutions); the paper fine-tunes everything else."""
        convs = (self.model.conv1, self.model.conv2) if self.log_mel is not None else (self.model.feature_extractor,)
        for p in (p for m in convs for p in m.parameters()):
            p.requires_grad = False

    @property
    def layers(self) -> nn.ModuleList:
        """The transformer layers, in order (Whisper keeps them on the model, WavLM and its kin on its encoder)."""
        return self.model.layers if self.log_mel is not None else self.model.encoder.layers

    def keep_layers(self, count: int) -> None:
        """Keep the first `count` transformer layers and drop the rest (their weights too).

        The model's config records the new depth, so `architecture()` rebuilds the same encoder.

        Raises:
            ConfigError: `count` is not in [1, the encoder's depth].
        """
        layers = self.layers
        if not 1 <= count <= len(layers):
            raise ConfigError(f"model.speech_encoder_layers={count}: the speech encoder has {len(layers)} layers")
        del layers[count:]
        setattr(self.model.config, "encoder_layers" if self.log_mel is not None else "num_hidden_layers", count)

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Number of encoder frames for each waveform length."""
        if self.log_mel is not None:
            return whisper_frame_lengths(sample_lengths)
        return self.model._get_feat_extract_output_lengths(sample_lengths).to(torch.long)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.log_mel is not None:
            return self._whisper(input_values, attention_mask.to(torch.long).sum(-1))
        features = self.frontend(input_values)
        lengths = self.frame_lengths(attention_mask.to(torch.long).sum(-1))
        frame_mask = torch.arange(features.shape[1], device=features.device)[None, :] < lengths[:, None]
        return self.backend(features, frame_mask), frame_mask

    def frontend(self, input_values: torch.Tensor) -> torch.Tensor:
        """The per-frame part: CNN feature encoder and feature projection, waveforms [B, T] -> [B, F, D].

        Frame i depends only on samples [320 i, 320 i + 400) when the CNN normalises per frame
        (`feat_extract_norm="layer"`); a GroupNorm CNN normalises over the whole input
        (`crab_rt.export.speech_split` measures what that means for incremental encoding).
        """
        features = self.model.feature_extractor(input_values).transpose(1, 2)
        projected = self.model.feature_projection(features)
        return projected[0] if isinstance(projected, tuple) else projected

    def backend(self, hidden: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """The rest of the encoder on `frontend`'s output: [B, F, D] and a bool frame mask -> [B, F, D]."""
        if self.training and getattr(self.model.config, "apply_spec_augment", False):
            hidden = self.model._mask_hidden_states(hidden, attention_mask=frame_mask)
        if self.model_type == "wavlm":
            hidden = self._wavlm_encoder(hidden, frame_mask)
        else:
            hidden = self.model.encoder(hidden, attention_mask=frame_mask).last_hidden_state
        return hidden

    def _wavlm_encoder(self, hidden: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        # Same computation as transformers' WavLMEncoder(StableLayerNorm).forward,
        # with the in-place boolean index replaced by a multiply.
        encoder = self.model.encoder
        stable = bool(self.model.config.do_stable_layer_norm)
        hidden = hidden * frame_mask.unsqueeze(-1).to(hidden.dtype)
        hidden = hidden + encoder.pos_conv_embed(hidden)
        if not stable:
            hidden = encoder.layer_norm(hidden)
        hidden = encoder.dropout(hidden)
        layerdrop = float(self.model.config.layerdrop) if self.training else 0.0
        position_bias = None
        with warnings.catch_warnings():
            # transformers' WavLM attention hands torch a bool key_padding_mask (from our frame mask) beside its
            # float position bias, and torch warns "Support for mismatched key_padding_mask and attn_mask is
            # deprecated" (once per process in `crab-rt train`, on every call where warnings repeat). Harmless:
            # torch converts the bool mask itself. Silenced for this call only, not process-wide.
            warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*", category=UserWarning)
            for i, layer in enumerate(encoder.layers):
                if i > 0 and layerdrop > 0.0 and torch.rand([]) < layerdrop:
                    continue
                kwargs = {} if stable else {"index": i}
                hidden, position_bias = layer(hidden, attention_mask=frame_mask, position_bias=position_bias,
                                              **kwargs)
        if stable:
            hidden = encoder.layer_norm(hidden)
        return hidden

    def _whisper(self, input_values: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Whisper's encoder (OpenAI's AudioEncoder) on the clip's own frames: log-mel, two GELU convs,
        # sinusoidal positions, pre-norm layers with padded keys masked out, final LayerNorm.
        model = self.model
        mel_frames = torch.div(lengths, WHISPER_HOP, rounding_mode="floor")
        mel_index = torch.arange(input_values.shape[1] // WHISPER_HOP, device=lengths.device)
        mel_mask = mel_index[None, :] < mel_frames[:, None]
        hidden = nn.functional.gelu(model.conv1(self.log_mel(input_values, mel_mask)))
        hidden = hidden * mel_mask[:, None, :].to(hidden.dtype)
        hidden = nn.functional.gelu(model.conv2(hidden)).transpose(1, 2)
        frames = hidden.shape[1]
        frame_mask = torch.arange(frames, device=lengths.device)[None, :] < whisper_frame_lengths(lengths)[:, None]
        hidden = hidden + model.embed_positions.weight[:frames].to(hidden.dtype)
        hidden = nn.functional.dropout(hidden, p=model.dropout, training=self.training)
        blocked = torch.finfo(hidden.dtype).min
        attention = torch.zeros(frame_mask.shape, dtype=hidden.dtype, device=hidden.device)
        attention = attention.masked_fill(~frame_mask, blocked)[:, None, None, :]
        for layer in model.layers:
            out = layer(hidden, attention)
            hidden = out[0] if isinstance(out, tuple) else out
        hidden = model.layer_norm(hidden)
        return hidden * frame_mask.unsqueeze(-1).to(hidden.dtype), frame_mask

    def fold_weight_norm(self) -> None:
        """Replace the positional conv's weight_norm by its plain weight (for export)."""
        if self.log_mel is not None:
            return  # Whisper's positions are a fixed table
        conv = self.model.encoder.pos_conv_embed.conv
        if hasattr(conv, "parametrizations") and "weight" in conv.parametrizations:
            torch.nn.utils.parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
        elif hasattr(conv, "weight_g"):
            torch.nn.utils.remove_weight_norm(conv)


class TextEncoder(nn.Module):
    """Token ids -> hidden states [B, L, D] (`last_hidden_state`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.model_type = model.config.model_type
        self.hidden_size = int(model.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
