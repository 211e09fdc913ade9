"""The `crab-rt serve` wire protocol, versions 1 and 1.1 (docs/protocol.md): message builders and the `start` parser.

Shared by the server and the clients; no network code here. One WebSocket
connection is one stream: the client sends a JSON `start`, binary PCM frames,
then `stop`; the server answers `ready`, `speech_start`/`speech_end`, `event`,
`error` and finally `done`. The JSON Schemas in `schemas/` describe every
message; the tests validate each message the server sends against them.
Version 1.1 adds provisional events: a start with `"protocol": 1.1,
"provisional": true` also gets, per utterance, an `event` with `"stage":
"provisional"` from the voice alone before the final one. Every event carries
`stage` and `abstained`, fields a version-1 client ignores.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from crab_rt.audio import PCM_FORMATS
from crab_rt.checks import is_int
from crab_rt.errors import CrabError

__all__ = [
    "PROTOCOL_VERSION", "PROTOCOL_VERSIONS", "parse_version", "DEFAULT_PORT", "CLOSE", "ERROR_CODES", "DONE_REASONS",
    "ProtocolError",
    "StartRequest", "ready_message", "speech_message", "event_message", "error_message", "done_message",
    "schema_path",
]

PROTOCOL_VERSION = 1.1  # the newest (crab-rt's clients send 1.1 only to ask for provisional events, else 1)
PROTOCOL_VERSIONS = (1, 1.1)  # what a start may ask for; without `protocol`, 1
DEFAULT_PORT = 8765

# WebSocket close codes the server uses (RFC 6455 section 7.4.1).
CLOSE = {
    "normal": 1000,  # after `done` (stop, idle timeout)
    "going_away": 1001,  # after `done` when the server drains (SIGTERM, Ctrl-C)
    "invalid_data": 1007,  # bad_audio: partial sample frames, NaN/inf f32le samples
    "policy": 1008,  # bad_start, protocol, unsupported_language
    "too_big": 1009,  # a message over --max-message-bytes (closed by the WebSocket layer)
    "internal": 1011,  # a worker failed on this stream's audio
    "try_again_later": 1013,  # server_full: every stream slot was taken when this start arrived
}

# error.code -> whether the stream ends with it (fatal) or goes on.
ERROR_CODES: dict[str, bool] = {
    "bad_start": True,
    "protocol": True,
    "unsupported_language": True,
    "bad_audio": True,
    "idle_timeout": True,
    "server_full": True,
    "internal": True,
    "utterance_dropped": False,
    "messages_dropped": False,
}

DONE_REASONS = ("stop", "drain", "idle_timeout", "error")

_STREAM_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}")  # matched whole (fullmatch: no final newline)
_LANGUAGE_RE = re.compile(r"[a-z]{2,3}")
_START_FIELDS = {"type", "protocol", "sample_rate", "format", "channels", "language", "stream_id", "realtime",
                 "provisional"}


def parse_version(value: object) -> float | None:
    """A `protocol` field as one of PROTOCOL_VERSIONS (1.0 counts as 1; true does not), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if _integer(value) == 1:
        return 1
    return 1.1 if value == 1.1 else None


def _integer(value: object) -> int | None:
    """A JSON integer as JSON Schema reads it (16000 and 16000.0, not true), as an int; None for anything else."""
    if is_int(value):
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


class ProtocolError(CrabError):
    """A client message breaks the protocol; `code` is the `error.code` the server answers with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class StartRequest:
    """A validated `start` message.

    Attributes:
        sample_rate: Hz of the PCM the client sends (resampled to 16 kHz by the server).
        format: "s16le" or "f32le".
        channels: interleaved channels (averaged to mono).
        language: the ASR language asked for, or None for the server's.
        stream_id: the client's name for the stream, or None (the server picks one).
        realtime: the client sends live audio; the server paces it to real time. False: as fast as the
            pipeline takes it (files), with back-pressure instead of loss.
        protocol: the version the client speaks, 1 or 1.1.
        provisional: (1.1) also send a provisional event per utterance, from the voice alone.
    """

    sample_rate: int
    format: str
    channels: int = 1
    language: str | None = None
    stream_id: str | None = None
    realtime: bool = True
    protocol: float = 1
    provisional: bool = False

    @classmethod
    def parse(cls, text: str | bytes) -> StartRequest:
        """Parse and check the first message of a connection.

        Raises:
            ProtocolError: "protocol" for audio before `start` or a message that is not a `start`,
                "bad_start" for invalid JSON or a field that is missing, unknown or out of range.
        """
        if isinstance(text, (bytes, bytearray, memoryview)):
            raise ProtocolError("protocol", "audio before start: the first message must be a JSON start message")
        try:
            msg = json.loads(text)
        except RecursionError:
            raise ProtocolError("bad_start", "start: not valid JSON: nested too deeply") from None
        except ValueError as e:
            raise ProtocolError("bad_start", f"start: not valid JSON: {e}") from None
        if not isinstance(msg, dict):
            raise ProtocolError("bad_start", f"start: expected a JSON object, got {type(msg).__name__}")
        if msg.get("type") != "start":
            raise ProtocolError("protocol", f"the first message must be a start message, got type {msg.get('type')!r}")
        unknown = sorted(set(msg) - _START_FIELDS)
        if unknown:
            raise ProtocolError("bad_start", f"start: unknown field(s) {', '.join(map(repr, unknown))}; "
                                f"allowed: {', '.join(sorted(_START_FIELDS))}")
        version = parse_version(msg.get("protocol", 1))
        if version is None:
            raise ProtocolError("bad_start", f"start.protocol = {msg.get('protocol')!r}: this server speaks versions "
                                f"{' and '.join(map(str, PROTOCOL_VERSIONS))}")
        for name in ("sample_rate", "format"):
            if name not in msg:
                raise ProtocolError("bad_start", f"start: missing field {name}")
        rate, channels = _integer(msg["sample_rate"]), _integer(msg.get("channels", 1))
        if rate is None or not 8000 <= rate <= 192_000:
            raise ProtocolError("bad_start", f"start.sample_rate = {msg['sample_rate']!r}: must be an integer in "
                                "[8000, 192000]")
        if not isinstance(msg["format"], str) or msg["format"] not in PCM_FORMATS:
            raise ProtocolError("bad_start", f"start.format = {msg['format']!r}: must be one of "
                                f"{', '.join(PCM_FORMATS)}")
        if channels is None or not 1 <= channels <= 8:
            raise ProtocolError("bad_start", f"start.channels = {msg.get('channels')!r}: must be an integer in "
                                "[1, 8]")
        language = msg.get("language")
        if language is not None and (not isinstance(language, str) or not _LANGUAGE_RE.fullmatch(language)):
            raise ProtocolError("bad_start", f"start.language = {language!r}: must be a 2-3 letter lower-case "
                                "code or null")
        stream_id = msg.get("stream_id")
        if stream_id is not None and (not isinstance(stream_id, str) or not _STREAM_ID_RE.fullmatch(stream_id)):
            raise ProtocolError("bad_start", f"start.stream_id = {stream_id!r}: must be 1-64 characters of "
                                "A-Z a-z 0-9 _ . : @ - (starting with a letter or digit)")
        realtime = msg.get("realtime", True)
        if not isinstance(realtime, bool):
            raise ProtocolError("bad_start", f"start.realtime = {realtime!r}: must be true or false")
        provisional = msg.get("provisional", False)
        if not isinstance(provisional, bool):
            raise ProtocolError("bad_start", f"start.provisional = {provisional!r}: must be true or false")
        if provisional and version < 1.1:
            raise ProtocolError("bad_start", "start.provisional needs protocol 1.1 (send \"protocol\": 1.1)")
        return cls(rate, msg["format"], channels, language, stream_id, realtime, version, provisional)

    def to_message(self) -> dict[str, Any]:
        """The `start` message a client sends for this request."""
        msg: dict[str, Any] = {"type": "start", "protocol": self.protocol, "sample_rate": self.sample_rate,
                               "format": self.format, "channels": self.channels, "realtime": self.realtime}
        if self.provisional:
            msg["provisional"] = True
        if self.language is not None:
            msg["language"] = self.language
        if self.stream_id is not None:
            msg["stream_id"] = self.stream_id
        return msg


def ready_message(stream_id: str, server: str, labels: list[str], request: StartRequest, language: str | None,
                  max_message_bytes: int, idle_timeout_s: float) -> dict[str, Any]:
    """`ready`: the version the client asked for, and (1.1) whether it gets provisional events."""
    extra = {"provisional": request.provisional} if request.protocol >= 1.1 else {}
    return {"type": "ready", "protocol": request.protocol, **extra, "stream_id": stream_id, "server": server,
            "labels": list(labels), "sample_rate": request.sample_rate, "format": request.format,
            "channels": request.channels, "language": language, "realtime": request.realtime,
            "max_message_bytes": max_message_bytes, "idle_timeout_s": idle_timeout_s}


def speech_message(kind: str, stream_id: str, time_s: float, utterance_id: int | None = None) -> dict[str, Any]:
    """`speech_start` or `speech_end` (with the utterance it closed, or null)."""
    msg: dict[str, Any] = {"type": kind, "stream_id": stream_id, "time_s": round(time_s, 3)}
    if kind == "speech_end":
        msg["utterance_id"] = utterance_id
    return msg


def event_message(event_fields: dict[str, Any]) -> dict[str, Any]:
    """An `event`: `EmotionEvent.to_dict()` (the fields of `crab-rt listen`'s JSON lines) plus its type."""
    return {"type": "event", **event_fields}


def error_message(code: str, message: str) -> dict[str, Any]:
    """An `error`; a message quoting a client's text keeps only what UTF-8 can carry (lone surrogates escaped)."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"type": "error", "code": code, "message": message, "fatal": ERROR_CODES[code]}


def done_message(stream_id: str, reason: str, audio_s: float, utterances: int, events: int,
                 dropped_utterances: int, dropped_messages: int) -> dict[str, Any]:
    if reason not in DONE_REASONS:
        raise ValueError(f"unknown done reason {reason!r}")
    return {"type": "done", "stream_id": stream_id, "reason": reason, "audio_s": round(audio_s, 3),
            "utterances": utterances, "events": events, "dropped_utterances": dropped_utterances,
            "dropped_messages": dropped_messages}


def schema_path(direction: str):
    """The JSON Schema file of the messages one side sends: "client" or "server"."""
    from pathlib import Path

    if direction not in ("client", "server"):
        raise ValueError(f"direction must be 'client' or 'server', got {direction!r}")
    return Path(__file__).with_name("schemas") / f"{direction}-messages.schema.json"
