"""Model configuration: the head's sizes and where the two encoders come from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from crab_rt.errors import ConfigError

__all__ = ["HeadConfig", "ModelConfig", "MODALITIES", "TAP_NAMES"]

MODALITIES = ("both", "speech", "text")
# The five places the Contrastive Supervision Legs attach to (paper, Fig. 1).
TAP_NAMES = ("speech_unimodal", "text_unimodal", "speech_pooled", "text_pooled", "classifier")


@dataclass(frozen=True)
class HeadConfig:
    """Sizes of the Crab head (paper, section III-B). Defaults are the paper's.

    Attributes:
        speech_dim: width of the speech encoder's hidden states (1024 for WavLM Large).
        text_dim: width of the text encoder's hidden states (1024 for RoBERTa Large).
        hidden_dim: h, the projection width; each bi-GRU direction has h units, so the
            unimodal outputs are 2h wide.
        num_attention_heads: heads of the cross-modal attention (the paper uses one).
        attention_dropout: dropout on the cross-modal attention weights.
        classifier_dim: hidden width of the classifier.
        classifier_dropout: dropout between the classifier's two Linear layers.
        num_classes: number of emotion classes.
        modality: "both" (Crab), or "speech" / "text" for the unimodal ablations.
        modality_dropout: in training, the share of samples that lose one modality (half of them the
            speech, half the text: its unimodal block's output is zeroed before the cross-modal
            attention), so the classifier cannot lean on whichever branch fits the training set
            first (0: off, the paper's head). Only with modality "both"; inference never drops.
        speech_spread: also give the classifier the speech frames' standard deviation over time (after
            the cross-modal attention), beside their attention pool: statistics pooling, as x-vector and
            ECAPA speaker models do. The pool says what the voice is like where the head looks; the spread
            says how much pitch, loudness and rate move over the utterance (False: the paper's head).
    """

    speech_dim: int = 1024
    text_dim: int = 1024
    hidden_dim: int = 512
    num_attention_heads: int = 1
    attention_dropout: float = 0.5
    classifier_dim: int = 512
    classifier_dropout: float = 0.5
    num_classes: int = 4
    modality: str = "both"
    modality_dropout: float = 0.0
    speech_spread: bool = False

    def validate(self) -> HeadConfig:
        for name in ("speech_dim", "text_dim", "hidden_dim", "num_attention_heads", "classifier_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"head.{name} must be a positive integer, got {value!r}")
        if self.num_classes < 2:
            raise ConfigError(f"head.num_classes must be >= 2, got {self.num_classes}")
        if (2 * self.hidden_dim) % self.num_attention_heads:
            raise ConfigError(
                f"head.num_attention_heads={self.num_attention_heads} must divide 2*hidden_dim={2 * self.hidden_dim}"
            )
        for name in ("attention_dropout", "classifier_dropout", "modality_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"head.{name} must be in [0, 1), got {value}")
        if not isinstance(self.speech_spread, bool):
            raise ConfigError(f"head.speech_spread must be true or false, got {self.speech_spread!r}")
        if self.modality not in MODALITIES:
            raise ConfigError(f"head.modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        return self

    @property
    def taps(self) -> tuple[str, ...]:
        """The leg taps that exist for this modality."""
        if self.modality == "speech":
            return ("speech_unimodal", "speech_pooled", "classifier")
        if self.modality == "text":
            return ("text_unimodal", "text_pooled", "classifier")
        return TAP_NAMES

    def tap_dims(self) -> dict[str, int]:
        """Width of each tap's embedding."""
        two_h = 2 * self.hidden_dim
        dims = {
            "speech_unimodal": two_h,
            "text_unimodal": two_h,
            "speech_pooled": two_h,
            "text_pooled": two_h,
            "classifier": self.classifier_dim,
        }
        return {k: dims[k] for k in self.taps}

    @classmethod
    def from_dict(cls, d: dict) -> HeadConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown head config key(s): {', '.join(unknown)}")
        return cls(**d).validate()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelConfig:
    """Where the encoders come from and how inputs are prepared.

    `speech_encoder` / `text_encoder` are a Hugging Face hub id, a local folder,
    or `random:<preset>` (see `crab_rt.model.presets`) for random weights; the
    speech encoder may also be `whisper:<model>`, Whisper's pretrained encoder
    read from a CTranslate2 model offline (`crab_rt.model.whisper_encoder`).
    `freeze_feature_encoder` freezes the speech encoder's CNN (the paper's
    setting); `freeze_speech_encoder` freezes all of it (a pretrained encoder
    used as a fixed feature extractor, as the demo uses Whisper tiny.en's).
    `speech_encoder_layers` keeps the speech encoder's first N transformer layers (None: all): the head
    then hears layer N's states (through the encoder's final LayerNorm where it has one). A pretrained
    ASR encoder's middle layers carry more of a voice's prosody than its last, which its ASR training
    pushes towards the words (docs/accuracy.md measures it for Whisper tiny.en), and fewer layers run faster.
    `speech_classifier` adds the voice-only classifier of provisional events.
    """

    speech_encoder: str = "microsoft/wavlm-large"
    text_encoder: str = "FacebookAI/roberta-large"
    head: HeadConfig = HeadConfig()
    max_audio_s: float = 12.0
    max_text_tokens: int = 128
    freeze_feature_encoder: bool = True
    freeze_speech_encoder: bool = False
    speech_encoder_layers: int | None = None
    # A voice-only classifier on the speech encoder's states (crab_rt.model.speech_classifier), trained beside
    # Crab on detached states: the runtime's provisional events. Ignored without a speech encoder.
    speech_classifier: bool = True

    def validate(self) -> ModelConfig:
        if not 0.5 <= self.max_audio_s <= 60.0:
            raise ConfigError(f"model.max_audio_s must be in [0.5, 60], got {self.max_audio_s}")
        if not 8 <= self.max_text_tokens <= 512:
            raise ConfigError(f"model.max_text_tokens must be in [8, 512], got {self.max_text_tokens}")
        for name in ("speech_encoder", "text_encoder"):
            if not str(getattr(self, name)).strip():
                raise ConfigError(f"model.{name} must name a hub id, a folder or random:<preset>")
        layers = self.speech_encoder_layers
        if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 1):
            raise ConfigError(f"model.speech_encoder_layers must be a positive integer or absent, got {layers!r}")
        self.head.validate()
        return self
