"""Bundle + backend -> emotion probabilities, one stage at a time.

The three stages are separate calls so the scheduler can start the speech
encoder the moment an utterance ends, while ASR still runs, and batch
utterances from several streams. Features are kept per utterance without
padding; `classify` pads whatever batch it is given, and the head masks the
padding, so results do not depend on batch-mates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crab_rt.backends.base import GraphSession
from crab_rt.backends.select import BackendChoice, load_sessions
from crab_rt.bundle import Bundle, load_bundle
from crab_rt.errors import BundleError
from crab_rt.features import pad_waveforms
from crab_rt.runtime.speech_frontend import SPLIT_GRAPHS, FrontendGeometry, UtteranceFrames, encode_split
from crab_rt.text import TextTokenizer

__all__ = ["EmotionModel", "Features", "softmax"]


@dataclass
class Features:
    """One utterance's encoder output: hidden states [T, D] of valid steps only."""

    hidden: np.ndarray

    @property
    def length(self) -> int:
        return int(self.hidden.shape[0])


def _unpad(hidden: np.ndarray, lengths: np.ndarray) -> list[Features]:
    """One fp32 feature matrix per batch item, cut to its valid length."""
    return [Features(hidden[i, : int(n)].astype(np.float32, copy=False)) for i, n in enumerate(lengths)]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature` (calibrated probabilities; float64 inside, float32 out)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _stack(features: Sequence[Features], dim: int) -> tuple[np.ndarray, np.ndarray]:
    length = max(1, max(f.length for f in features))
    hidden = np.zeros((len(features), length, dim), dtype=np.float32)
    mask = np.zeros((len(features), length), dtype=np.int64)
    for i, f in enumerate(features):
        hidden[i, : f.length] = f.hidden
        mask[i, : f.length] = 1
    return hidden, mask


class EmotionModel:
    """A loaded bundle on one backend. Shared by all streams; holds no stream state.

    Args:
        bundle: the loaded bundle.
        sessions: graph name -> session (see `crab_rt.backends.select.load_sessions`).
        choice: which backend runs them, for logs.
    """

    def __init__(self, bundle: Bundle, sessions: dict[str, GraphSession], choice: BackendChoice,
                 split: dict[str, GraphSession] | None = None, split_note: str = "") -> None:
        self.bundle = bundle
        self.sessions = sessions
        self.choice = choice
        # Incremental speech encoding (runtime/speech_frontend.py): the split graphs, or None and why not.
        self.split = split if split and all(n in split for n in SPLIT_GRAPHS) else None
        self.split_note = split_note
        self.frontend_geometry = None if self.split is None else FrontendGeometry.from_manifest(
            bundle.incremental_speech, bundle.normalize_waveform, bundle.max_audio_samples)
        self.labels = list(bundle.labels)
        self.uses_speech = "speech_encoder" in sessions
        self.uses_text = "text_encoder" in sessions
        # The voice-only classifier of provisional events (a bundle exported before it has none).
        self.has_voice = "speech_classifier" in sessions
        # Calibrated confidence: each classifier's logits over its temperature (crab_rt.train.calibration).
        self.temperatures = {g: bundle.temperature(g) for g in ("head", "speech_classifier")}
        self.tokenizer = (
            TextTokenizer.from_file(bundle.tokenizer_path, bundle.max_text_tokens) if self.uses_text else None
        )
        dims = bundle.dims
        self._speech_dim = dims.get("speech_hidden")
        self._text_dim = dims.get("text_hidden")

    @classmethod
    def load(
        cls,
        bundle: str | Path | Bundle,
        backend: str = "auto",
        gpu: int | None = None,
        precision: str = "fp32",
        threads: int | Mapping[str, int] = 0,
        spinning: bool = False,
        incremental_speech: bool = True,
    ) -> EmotionModel:
        """Load a bundle folder (hashes verified) on `backend` (arguments as `load_sessions`).

        With `incremental_speech`, the bundle's split speech graphs are loaded too when its incremental parity
        is within its bound and the backend runs them (`split_note` says why not otherwise).
        """
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle)
        sessions, choice = load_sessions(bundle, backend, gpu, precision, threads, spinning)
        split, note = None, "turned off"
        if incremental_speech and "speech_encoder" in sessions:
            from crab_rt.runtime.speech_frontend import load_split_sessions

            split, note = load_split_sessions(bundle, choice, sessions, gpu, threads, spinning)
        return cls(bundle, sessions, choice, split, note)

    def encode_speech(self, audios: Sequence[np.ndarray]) -> list[Features]:
        """Speech encoder on a batch of 16 kHz waveforms (cut at the model's maximum length)."""
        values, mask = pad_waveforms(audios, self.bundle.normalize_waveform, self.bundle.max_audio_samples)
        out = self.sessions["speech_encoder"].run({"input_values": values, "attention_mask": mask})
        return _unpad(out["hidden_states"], out["frame_mask"].sum(1))

    def encode_speech_split(self, audios: Sequence[np.ndarray],
                            states: Sequence[UtteranceFrames | None]) -> tuple[list[Features], float]:
        """Speech encoder on a batch through the split graphs: the frames each state already holds, the front
        end on the rest (the tail), then the backend on all frames.

        Args:
            audios: the utterances' 16 kHz waveforms.
            states: per utterance, its stream's `UtteranceFrames` or None (then its front end runs whole).

        Returns:
            the features (as `encode_speech`) and the time of the tail's front end (ms).
        """
        hidden, tail_ms = encode_split(self.split["speech_frontend"], self.split["speech_backend"],
                                       self.frontend_geometry, audios, states)
        return [Features(h) for h in hidden], tail_ms

    def encode_text(self, texts: Sequence[str]) -> list[Features]:
        """Text encoder on a batch of transcripts (empty text is just `<s></s>`)."""
        ids, mask = self.tokenizer.encode_batch(list(texts))
        out = self.sessions["text_encoder"].run({"input_ids": ids, "attention_mask": mask})
        return _unpad(out["hidden_states"], mask.sum(1))

    def classify(self, speech: Sequence[Features] | None, text: Sequence[Features] | None) -> np.ndarray:
        """Head on a batch; returns probabilities [B, C] in `labels` order."""
        inputs = {}
        if self.uses_speech:
            dim = self._speech_dim or speech[0].hidden.shape[1]
            inputs["speech_hidden"], inputs["speech_mask"] = _stack(speech, dim)
        if self.uses_text:
            inputs["text_hidden"], inputs["text_mask"] = _stack(text, self._text_dim or text[0].hidden.shape[1])
        return softmax(self.sessions["head"].run(inputs)["logits"], self.temperatures["head"])

    def classify_voice(self, speech: Sequence[Features]) -> np.ndarray:
        """The voice-only classifier on a batch of speech features: calibrated probabilities [B, C].

        Raises:
            BundleError: the bundle has no voice-only classifier (`has_voice` is False).
        """
        if not self.has_voice:
            raise BundleError(f"{self.bundle.root}: this bundle has no voice-only classifier (exported before crab-rt "
                              "had one, or trained with model.speech_classifier = false); retrain and re-export")
        hidden, mask = _stack(speech, self._speech_dim or speech[0].hidden.shape[1])
        out = self.sessions["speech_classifier"].run({"speech_hidden": hidden, "speech_mask": mask})
        return softmax(out["logits"], self.temperatures["speech_classifier"])

    def predict(self, audios: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        """All three stages at once: probabilities [B, C]."""
        speech = self.encode_speech(audios) if self.uses_speech else None
        text = self.encode_text(texts) if self.uses_text else None
        return self.classify(speech, text)

    def close(self) -> None:
        for s in (*self.sessions.values(), *(self.split or {}).values()):
            s.close()
