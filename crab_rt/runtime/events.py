"""Emotion events: one per utterance, as a dataclass and a JSON line."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

__all__ = ["EmotionEvent", "LATENCY_KEYS", "STAGES"]

# Milliseconds. end_to_event: from end-of-speech detection (after the hangover)
# to the event; queue_wait: time the utterance waited for a free worker;
# speech_encoder: the speech encoder's time after the end of speech. With incremental
# speech encoding, speech_frontend is the front end's time spent while the person spoke
# (not on the critical path) and speech_tail the front end's share of speech_encoder
# at the end (the frames not yet computed); both are absent from events of a pipeline
# that does not encode incrementally.
# speech_classifier: the voice-only classifier's time, in provisional events.
LATENCY_KEYS = ("end_to_event", "asr", "speech_encoder", "text_encoder", "head", "queue_wait", "speech_frontend",
                "speech_tail", "speech_classifier")
# An event's stage: "provisional" from the voice alone, as soon as the speech encoder has run (no text); "final"
# from voice and words, after ASR. Both carry the utterance's utterance_id.
STAGES = ("provisional", "final")


@dataclass(frozen=True)
class EmotionEvent:
    """The emotion of one utterance.

    Attributes:
        stream_id: the stream it came from.
        utterance_id: 0, 1, 2, ... within the stream.
        start_s, end_s: the utterance's span in the stream (seconds, pre-roll included).
        text: the transcript ("" when ASR is off or its guard dropped the text).
        text_flagged: the ASR guard flagged (or dropped) the transcript as unreliable.
        label: the most probable emotion.
        confidence: its probability (calibrated by the bundle's temperature).
        probabilities: every label's probability.
        latency_ms: per stage, see LATENCY_KEYS.
        forced_split: the utterance was cut at the model's maximum length.
        stage: "final" (voice and words) or "provisional" (the voice alone, before ASR; no text), see STAGES.
        abstained: the confidence is below the pipeline's `min_confidence`; the label stays, a consumer decides.
    """

    stream_id: str
    utterance_id: int
    start_s: float
    end_s: float
    text: str
    text_flagged: bool
    label: str
    confidence: float
    probabilities: dict[str, float]
    latency_ms: dict[str, float] = field(default_factory=dict)
    forced_split: bool = False
    stage: str = "final"
    abstained: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["start_s"] = round(self.start_s, 3)
        d["end_s"] = round(self.end_s, 3)
        d["confidence"] = round(self.confidence, 4)
        d["probabilities"] = {k: round(v, 4) for k, v in self.probabilities.items()}
        d["latency_ms"] = {k: round(v, 2) for k, v in self.latency_ms.items()}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)
