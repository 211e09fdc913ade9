"""The client side of the protocol's data (versions 1 and 1.1): typed server messages, their lenient parser,
PCM encoding and splitting.

`parse_message` turns one JSON text message into `Ready`, `SpeechStart`, `SpeechEnd`, `EmotionEvent`,
`ServerError` or `Done` (unknown fields ignored, required ones checked); `encode_pcm` and `split_payload` turn
float audio into the binary messages a stream declared. Errors are `ClientError`s, one line each.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from crab_rt.audio import PCM_FORMATS
from crab_rt.checks import is_int
from crab_rt.errors import CrabError
from crab_rt.runtime.events import STAGES, EmotionEvent
from crab_rt.serve.protocol import PROTOCOL_VERSIONS, parse_version

__all__ = ["ClientError", "Message", "Ready", "SpeechStart", "SpeechEnd", "Event", "ServerError", "Done",
           "encode_pcm", "split_payload", "parse_message"]


class ClientError(CrabError):
    """The server cannot be reached, refused the stream, or ended it; one line naming the server and the cause.

    Attributes:
        status: the HTTP status of a refused handshake (401, 503, ...), else None.
        close_code: the WebSocket close code when the connection ended early, else None.
        error_code: the `error.code` of a fatal server error, else None.
    """

    def __init__(self, message: str, *, status: int | None = None, close_code: int | None = None,
                 error_code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.close_code = close_code
        self.error_code = error_code


# ---- messages from the server ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """The server accepted the stream (`ready`)."""

    stream_id: str
    server: str
    labels: tuple[str, ...]
    sample_rate: int
    format: str
    channels: int
    language: str | None
    realtime: bool
    max_message_bytes: int
    idle_timeout_s: float
    protocol: float = 1
    provisional: bool = False  # (1.1) the stream gets provisional events

    def to_dict(self) -> dict[str, Any]:
        return {"type": "ready", **asdict(self), "labels": list(self.labels)}


@dataclass(frozen=True)
class SpeechStart:
    """The segmenter decided that speech started at `time_s` (stream seconds)."""

    stream_id: str
    time_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"type": "speech_start", **asdict(self)}


@dataclass(frozen=True)
class SpeechEnd:
    """A speech region ended at `time_s`; `utterance_id` is the utterance it produced, or None."""

    stream_id: str
    time_s: float
    utterance_id: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"type": "speech_end", **asdict(self)}


Event = EmotionEvent  # an `event` message is an EmotionEvent: `.to_json()` is `crab-rt listen`'s JSON line


@dataclass(frozen=True)
class ServerError:
    """An `error` message. A fatal one ends the stream: `done` follows, then `messages()` raises `ClientError`."""

    code: str
    message: str
    fatal: bool

    def to_dict(self) -> dict[str, Any]:
        return {"type": "error", **asdict(self)}


@dataclass(frozen=True)
class Done:
    """The last message of a stream, with its counts."""

    stream_id: str
    reason: str
    audio_s: float
    utterances: int
    events: int
    dropped_utterances: int
    dropped_messages: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": "done", **asdict(self)}


Message = Ready | SpeechStart | SpeechEnd | EmotionEvent | ServerError | Done


def _int(value: Any) -> int:
    if not is_int(value):
        raise ValueError("expected an integer")
    return value


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected a number")
    return float(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _version(value: Any) -> float:
    version = parse_version(value)
    if version is None:
        raise ValueError(f"expected a protocol version ({', '.join(map(str, PROTOCOL_VERSIONS))})")
    return version


def _stage(value: Any) -> str:
    if value not in STAGES:
        raise ValueError(f"expected one of {', '.join(STAGES)}")
    return value


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError("expected a list of strings")
    return tuple(_str(v) for v in value)


def _numbers(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError("expected an object of numbers")
    return {_str(k): _float(v) for k, v in value.items()}


# type -> (class, {field: converter}); every listed field is required (the schema's `required`), others ignored.
_MESSAGES: dict[str, tuple[type, dict[str, Callable[[Any], Any]]]] = {
    "ready": (Ready, {"stream_id": _str, "server": _str, "labels": _strings, "sample_rate": _int, "format": _str,
                      "channels": _int, "language": _optional(_str), "realtime": _bool, "max_message_bytes": _int,
                      "idle_timeout_s": _float, "protocol": _version}),
    "speech_start": (SpeechStart, {"stream_id": _str, "time_s": _float}),
    "speech_end": (SpeechEnd, {"stream_id": _str, "time_s": _float, "utterance_id": _optional(_int)}),
    "event": (EmotionEvent, {"stream_id": _str, "utterance_id": _int, "start_s": _float, "end_s": _float,
                             "text": _str, "text_flagged": _bool, "label": _str, "confidence": _float,
                             "probabilities": _numbers, "latency_ms": _numbers, "forced_split": _bool}),
    "error": (ServerError, {"code": _str, "message": _str, "fatal": _bool}),
    "done": (Done, {"stream_id": _str, "reason": _str, "audio_s": _float, "utterances": _int, "events": _int,
                    "dropped_utterances": _int, "dropped_messages": _int}),
}


# type -> {field: converter} of fields a message may lack (a server of an earlier protocol version); the class's
# default stands in.
_OPTIONAL_FIELDS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "ready": {"provisional": _bool},
    "event": {"stage": _stage, "abstained": _bool},
}


def parse_message(data: str | bytes) -> Message | None:
    """Parse one server message, leniently: unknown fields are ignored, an unknown `type` gives None.

    Raises:
        ClientError: binary data, not a JSON object, no `type`, or a required field missing or of the wrong type.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        raise ClientError(f"the server sent a binary message ({len(data)} bytes): protocol 1 sends JSON text only")
    try:
        msg = json.loads(data)
    except ValueError as e:
        raise ClientError(f"the server sent a text message that is not JSON ({e}): {data[:120]!r}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ClientError(f"the server sent a message without a type: {data[:120]!r}")
    kind = msg["type"]
    if kind not in _MESSAGES:
        return None
    cls, fields = _MESSAGES[kind]
    values = {}
    for name, convert in fields.items():
        if name not in msg:
            raise ClientError(f"the server sent a {kind} message without its {name!r} field: {data[:200]!r}")
        try:
            values[name] = convert(msg[name])
        except ValueError as e:
            raise ClientError(f"the server sent a {kind} message with {name} = {msg[name]!r}: {e}") from None
    for name, convert in _OPTIONAL_FIELDS.get(kind, {}).items():
        if name in msg:
            try:
                values[name] = convert(msg[name])
            except ValueError as e:
                raise ClientError(f"the server sent a {kind} message with {name} = {msg[name]!r}: {e}") from None
    return cls(**values)


# ---- audio -------------------------------------------------------------------------------------------------


def encode_pcm(audio: np.ndarray | bytes | bytearray | memoryview, format: str = "f32le", channels: int = 1) -> bytes:
    """Audio as the PCM bytes of a stream's declared format.

    Args:
        audio: float samples in [-1, 1], shape [T] (interleaved when channels > 1) or [T, channels]; int16
            samples for s16le; or raw bytes, returned as they are.
        format: "f32le" (floats as they are) or "s16le" (scaled by 32768, the inverse of the server's
            decoding, rounded to nearest, clipped to [-32768, 32767]).
        channels: interleaved channels of the stream.

    Raises:
        ClientError: an unknown format, NaN/infinite samples, a wrong shape or dtype, or not whole sample frames.
    """
    if format not in PCM_FORMATS:
        raise ClientError(f"format {format!r} is not supported: one of {', '.join(PCM_FORMATS)}")
    if isinstance(audio, (bytes, bytearray, memoryview)):
        data = bytes(audio)
    else:
        x = np.asarray(audio)
        if x.ndim == 2 and x.shape[1] == channels:
            x = x.reshape(-1)
        elif x.ndim != 1:
            raise ClientError(f"audio must have shape [time] or [time, {channels}], got {x.shape}")
        if x.dtype.kind == "f":
            if not np.all(np.isfinite(x)):
                raise ClientError("audio holds NaN or infinite samples")
            if format == "f32le":
                data = x.astype("<f4").tobytes()
            else:
                data = np.clip(np.rint(x.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2").tobytes()
        elif format == "s16le" and x.dtype == np.int16:
            data = x.astype("<i2").tobytes()
        else:
            raise ClientError(f"audio must be a float array (or int16 for s16le), got dtype {x.dtype}")
    frame = channels * np.dtype(PCM_FORMATS[format]).itemsize
    if len(data) % frame:
        raise ClientError(f"{len(data)} bytes of audio is not a whole number of {format} x {channels}-channel "
                          f"sample frames ({frame} bytes each)")
    return data


def split_payload(data: bytes, max_message_bytes: int, frame_bytes: int) -> list[memoryview]:
    """Cut PCM bytes into messages of at most `max_message_bytes`, each holding whole sample frames."""
    step = max_message_bytes - max_message_bytes % frame_bytes
    if step <= 0:
        raise ClientError(f"the server's max_message_bytes ({max_message_bytes}) is less than one sample frame "
                          f"({frame_bytes} bytes)")
    view = memoryview(data)
    return [view[i: i + step] for i in range(0, len(data), step)]
