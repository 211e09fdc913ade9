"""The whole Crab model: speech encoder + text encoder + head.

Training, export and the torch backend all use this one module. Contrastive
legs are not part of it: they live in `crab_rt.train.legs` and read the taps
that `forward(..., return_taps=True)` returns; inference computes no tap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from crab_rt.errors import ConfigError
from crab_rt.model.config import HeadConfig, ModelConfig
from crab_rt.model.encoders import SpeechEncoder, TextEncoder, hf_model_from_config, load_hf_model
from crab_rt.model.head import CrabHead
from crab_rt.model.speech_classifier import SpeechClassifier

__all__ = ["CrabModel", "count_parameters"]


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


class CrabModel(nn.Module):
    """Bimodal emotion classifier.

    Args:
        speech_encoder: `SpeechEncoder`, or None for a text-only model.
        text_encoder: `TextEncoder`, or None for a speech-only model.
        head: `CrabHead`.
        labels: class names, in logit order.
        normalize_waveform: whether inputs are normalised per utterance
            (recorded so export and the runtime prepare audio the same way).
        speech_classifier: the voice-only classifier on the speech encoder's states, or None.
    """

    def __init__(
        self,
        speech_encoder: SpeechEncoder | None,
        text_encoder: TextEncoder | None,
        head: CrabHead,
        labels: Sequence[str],
        normalize_waveform: bool,
        speech_classifier: SpeechClassifier | None = None,
    ) -> None:
        super().__init__()
        self.speech_encoder = speech_encoder
        self.text_encoder = text_encoder
        self.head = head
        self.speech_classifier = speech_classifier
        self.labels = list(labels)
        self.normalize_waveform = bool(normalize_waveform)

    @classmethod
    def build(cls, config: ModelConfig, labels: Sequence[str]) -> CrabModel:
        """Build from a config: load or randomly initialise the encoders, size the head."""
        config.validate()
        modality = config.head.modality
        speech = SpeechEncoder(load_hf_model(config.speech_encoder, "speech")) if modality != "text" else None
        if speech is not None and config.speech_encoder_layers is not None:
            speech.keep_layers(config.speech_encoder_layers)
        text = TextEncoder(load_hf_model(config.text_encoder, "text")) if modality != "speech" else None
        if speech is not None and speech.log_mel is not None and config.max_audio_s > 30.0:
            raise ConfigError(f"model.max_audio_s={config.max_audio_s}: Whisper's encoder takes at most 30 s")
        if speech is not None and config.freeze_feature_encoder:
            speech.freeze_feature_encoder()
        if speech is not None and config.freeze_speech_encoder:
            speech.requires_grad_(False)
        head_cfg = replace(
            config.head,
            speech_dim=speech.hidden_size if speech else config.head.speech_dim,
            text_dim=text.hidden_size if text else config.head.text_dim,
            num_classes=len(labels),
        )
        normalize = _wants_normalized_input(config.speech_encoder, speech)
        voice = SpeechClassifier(speech.hidden_size, len(labels)) if speech and config.speech_classifier else None
        return cls(speech, text, CrabHead(head_cfg), labels, normalize, voice)

    def architecture(self) -> dict:
        """Everything needed to rebuild this model without downloading: encoder configs and head config."""
        return {
            "speech_encoder": None if self.speech_encoder is None else self.speech_encoder.model.config.to_dict(),
            "text_encoder": None if self.text_encoder is None else self.text_encoder.model.config.to_dict(),
            "head": self.head.config.to_dict(),
            "labels": self.labels,
            "normalize_waveform": self.normalize_waveform,
            "speech_classifier": None if self.speech_classifier is None else self.speech_classifier.config(),
        }

    @classmethod
    def from_architecture(cls, arch: dict) -> CrabModel:
        """Rebuild (random weights) from `architecture()`; load a state dict afterwards."""

        def build(cfg: dict | None, wrapper):
            if cfg is None:
                return None
            cfg = dict(cfg)
            model_type = cfg.pop("model_type")
            return wrapper(hf_model_from_config(model_type, cfg))

        return cls(
            build(arch["speech_encoder"], SpeechEncoder),
            build(arch["text_encoder"], TextEncoder),
            CrabHead(HeadConfig.from_dict(arch["head"])),
            arch["labels"],
            arch["normalize_waveform"],
            None if not arch.get("speech_classifier") else SpeechClassifier(**arch["speech_classifier"]),
        )

    def forward(
        self,
        input_values: torch.Tensor | None,
        audio_mask: torch.Tensor | None,
        input_ids: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        return_taps: bool = False,
        speech_states: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        """Logits [B, C]; with `return_taps`, also a dict of the leg taps.

        `speech_states` (hidden states [B, F, D], bool frame mask [B, F]) stand in for the speech
        encoder's output when it is known already (a frozen encoder's, computed once per clip).
        """
        speech = speech_mask = text = text_bool_mask = None
        if speech_states is not None:
            speech, speech_mask = speech_states
        elif self.speech_encoder is not None:
            speech, speech_mask = self.speech_encoder(input_values, audio_mask)
        if self.text_encoder is not None:
            text = self.text_encoder(input_ids, text_mask)
            text_bool_mask = text_mask.to(torch.bool)
        return self.head(speech, speech_mask, text, text_bool_mask, return_taps=return_taps)

    def parameter_counts(self) -> dict[str, int]:
        return {
            "speech_encoder": count_parameters(self.speech_encoder),
            "text_encoder": count_parameters(self.text_encoder),
            "head": count_parameters(self.head),
            "speech_classifier": count_parameters(self.speech_classifier),
        }


def _wants_normalized_input(spec: str, speech: SpeechEncoder | None) -> bool:
    """Whether the speech encoder expects per-utterance normalised waveforms.

    Pretrained models say so in their feature extractor config; layer-norm
    feature encoders (WavLM Large, and our tiny presets) are trained with it.
    Whisper's log-mel sees the waveform as recorded (its level is a cue).
    """
    if speech is None or speech.log_mel is not None:
        return False
    from crab_rt.model.presets import RANDOM_PREFIX
    from crab_rt.model.whisper_encoder import WHISPER_PREFIX

    if not spec.startswith((RANDOM_PREFIX, WHISPER_PREFIX)):
        try:
            from transformers import AutoFeatureExtractor

            return bool(getattr(AutoFeatureExtractor.from_pretrained(spec), "do_normalize", True))
        except (OSError, ValueError):
            pass
    return speech.model.config.feat_extract_norm == "layer"
