"""Speech and text encoder wrappers around Hugging Face models.

`SpeechEncoder` returns the encoder's last hidden state and a frame mask; for
WavLM it runs its own masked encoder loop that exports cleanly to ONNX and
TensorRT (DESIGN.md section 4): padded frames are zeroed by a multiply instead
of an in-place boolean index, the frame mask is `arange(F) < lengths`, and the
positional convolution's weight_norm can be folded before export. Other SSL
backbones (HuBERT, wav2vec 2.0) run their stock Hugging Face encoder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from crab_rt.model.presets import RANDOM_PREFIX, preset_config

__all__ = ["SpeechEncoder", "TextEncoder", "load_hf_model", "hf_model_from_config"]


def hf_model_from_config(model_type: str, config: dict) -> nn.Module:
    """Build a randomly initialised Hugging Face model; downloads nothing."""
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.for_model(model_type, **config)
    return AutoModel.from_config(cfg)


def load_hf_model(spec: str, kind: str) -> nn.Module:
    """Load `spec`: `random:<preset>`, a local folder, or a hub id (pretrained).

    Raises:
        ConfigError: unknown preset.
        BackendError: the weights cannot be loaded (offline without a cache, ...).
    """
    from crab_rt.errors import BackendError

    if spec.startswith(RANDOM_PREFIX):
        model_type, cfg = preset_config(spec[len(RANDOM_PREFIX):], kind)
        return hf_model_from_config(model_type, cfg)
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(spec)
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

    def freeze_feature_encoder(self) -> None:
        """Freeze the CNN feature encoder (the paper fine-tunes everything else)."""
        for p in self.model.feature_extractor.parameters():
            p.requires_grad = False

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Number of encoder frames for each waveform length."""
        return self.model._get_feat_extract_output_lengths(sample_lengths).to(torch.long)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        for i, layer in enumerate(encoder.layers):
            if i > 0 and layerdrop > 0.0 and torch.rand([]) < layerdrop:
                continue
            kwargs = {} if stable else {"index": i}
            hidden, position_bias = layer(hidden, attention_mask=frame_mask, position_bias=position_bias, **kwargs)
        if stable:
            hidden = encoder.layer_norm(hidden)
        return hidden

    def fold_weight_norm(self) -> None:
        """Replace the positional conv's weight_norm by its plain weight (for export)."""
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
