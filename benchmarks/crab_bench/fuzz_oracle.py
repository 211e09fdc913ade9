"""The oracle of the `crab-rt serve` fuzzing: what docs/protocol.md promises for one client connection.

Owns:
- `Case`, `Frame`: the messages one WebSocket connection sends (text, binary, or bytes that are not UTF-8 sent as a
  text frame) and how it ends (`stop`, the client closes, the client drops the TCP connection, or it goes quiet);
- `documented_errors`: the `error` table of docs/protocol.md (code, fatal, close code), read from the document;
- `expect`: the outcome the documented protocol gives a case (the `error` code, the close code, whether `ready`
  and `done` come and with which reason), from that table and the rules of the `start` table and the client
  message schema, not from the server's code;
- `KNOWN_BUGS` / `known_bug`: server bugs found and not yet fixed, so that a run can tell them from new failures;
  `FIXED_BUGS` / `found_bug`: those the first runs found, fixed since (kept as regression tests).

JSON is read as Python's json module reads it (the server has no other choice): NaN and Infinity are accepted,
and numbers of more than 4300 digits or nesting deeper than the recursion limit are refused as not JSON
(RFC 8259 section 9 lets a parser limit both). The schema's patterns are read as JSON Schema (ECMA-262) reads
them: `$` is the end of the text, so a final newline does not match.
"""

from __future__ import annotations

import base64
import json
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crab_rt.audio import SAMPLE_RATE
from crab_rt.serve.protocol import CLOSE

__all__ = ["DOCS", "ERRORS", "START_FIELDS", "STOP", "FORMATS", "STREAM_ID", "ENDINGS", "ErrorRow", "Frame", "Case",
           "Expected", "documented_errors", "parse_json", "start_fault", "expect", "KNOWN_BUGS", "known_bug",
           "FIXED_BUGS", "found_bug",
           "has_surrogate"]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
START_FIELDS = ("type", "protocol", "sample_rate", "format", "channels", "language", "stream_id", "realtime",
                "provisional")


def _version(value: object) -> float | None:
    """The start table's `protocol`: 1 (1.0 counts: JSON has one number type) or 1.1; not true; else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return 1 if value == 1 else (1.1 if value == 1.1 else None)
STOP = json.dumps({"type": "stop"})
FORMATS = {"s16le": "<i2", "f32le": "<f4"}
# The client schema's patterns, matched whole (re.fullmatch: in re.match, `$` also matches before a final newline).
STREAM_ID = r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}"
LANGUAGE = r"[a-z]{2,3}"


# ---- the documented tables ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorRow:
    """One row of the `error` table in docs/protocol.md: whether the code is fatal, and the close code after it."""

    fatal: bool
    close: int | None


def documented_errors(path: Path = DOCS) -> dict[str, ErrorRow]:
    """The `error` table of docs/protocol.md: code -> (fatal, close code or None for "-")."""
    text = path.read_text(encoding="utf-8")
    section = text.split("### `error`", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (yes|no) \| .+ \| (\d{4}|-) \|$", section, re.MULTILINE)
    if not rows:
        raise ValueError(f"{path}: no error table under '### `error`'")
    return {code: ErrorRow(fatal == "yes", None if close == "-" else int(close)) for code, fatal, close in rows}


ERRORS = documented_errors()


# ---- cases ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """One WebSocket message: "text" (a str), "binary" (bytes) or "raw_text" (bytes sent as a text frame)."""

    kind: str
    data: str | bytes

    @property
    def size(self) -> int:
        """Bytes on the wire (what --max-message-bytes limits)."""
        return len(self.data.encode("utf-8")) if isinstance(self.data, str) else len(self.data)

    def __repr__(self) -> str:
        head = self.data[:60]
        more = "..." if len(self.data) > 60 else ""
        return f"{self.kind}({head!r}{more}, {self.size} B)"


ENDINGS = ("stop", "close", "abort", "idle")


@dataclass(frozen=True)
class Case:
    """The frames one connection sends, then its ending (when no frame ended the stream before).

    Endings: "stop" sends `{"type": "stop"}`; "close" closes the WebSocket (1000); "abort" drops the TCP
    connection without a close frame; "idle" sends nothing more and waits for the server's idle timeout.
    `tags` say which generators and mutations made it (for the statistics).
    """

    frames: tuple[Frame, ...]
    ending: str = "stop"
    tags: tuple[str, ...] = field(default=(), compare=False)

    def wire(self) -> tuple[Frame, ...]:
        """Every message the client would send: the frames, and `stop` when that is the ending."""
        return self.frames + ((Frame("text", STOP),) if self.ending == "stop" else ())

    def to_json(self) -> dict:
        """A reproducer: every frame in full (zlib + base64), the ending, the tags. `Case.from_json` reads it."""
        frames = []
        for f in self.frames:
            raw = f.data.encode("utf-8", "surrogatepass") if isinstance(f.data, str) else f.data
            frames.append({"kind": f.kind, "bytes": f.size, "preview": repr(f.data[:80]),
                           "zlib_b64": base64.b64encode(zlib.compress(raw, 9)).decode("ascii")})
        return {"frames": frames, "ending": self.ending, "tags": list(self.tags)}

    @classmethod
    def from_json(cls, data: dict) -> Case:
        frames = []
        for f in data["frames"]:
            raw = zlib.decompress(base64.b64decode(f["zlib_b64"]))
            frames.append(Frame(f["kind"], raw.decode("utf-8", "surrogatepass") if f["kind"] == "text" else raw))
        return cls(tuple(frames), data["ending"], tuple(data.get("tags", ())))


# ---- the oracle -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expected:
    """What the documented protocol promises for a case.

    Attributes:
        sent: how many messages of `case.wire()` the client sends (up to the one that ends the stream).
        started: a valid `start` went in, so `ready` comes first.
        error: the fatal `error` code, or None (no `error` message at all).
        close: the close code the client sees; None where the client ends the connection itself.
        done: the `done` reason, or None (no `done`).
        stream_id: the `stream_id` the start asked for (None: the server picks one).
        start: the start request, when started.
        samples_16k: mono samples accepted at 16 kHz (for `done.audio_s`), or None for other rates.
        transport: the connection is closed by the WebSocket layer (1009, 1007): no `error`, no `done`, and
            `ready` may be overtaken by the close.
    """

    sent: int
    started: bool
    error: str | None
    close: int | None
    done: str | None
    stream_id: str | None = None
    start: dict | None = None
    samples_16k: int | None = None
    transport: bool = False

    @property
    def outcome(self) -> str:
        """One word for the statistics: the error code, "stop", "too_big", "invalid_utf8", or the ending."""
        if self.error is not None:
            return self.error
        if self.close == CLOSE["too_big"]:
            return "too_big"
        if self.transport:
            return "invalid_utf8"
        return self.done or "client_closed"


_NOT_JSON = object()


def parse_json(text: str) -> object:
    """The value of a JSON text as the server's json module reads it, or `_NOT_JSON`."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _is_integer(v: object) -> bool:
    """JSON Schema's "integer": a number with no fractional part (16000 and 16000.0), not a boolean."""
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, float) and math.isfinite(v) and v.is_integer())


def _pattern(v: object, pattern: str) -> bool:
    return isinstance(v, str) and re.fullmatch(pattern, v) is not None


def start_fault(msg: object, server_language: str | None = None) -> str | None:
    """The documented error code of a first text message that parsed as JSON `msg`, or None for a valid `start`.

    docs/protocol.md: a first message that is not a `start` is `protocol` ("an unknown type"); a start field
    missing, unknown or out of range is `bad_start` (the ranges of the start table and the client schema); a
    valid start whose `language` is not the server's is `unsupported_language`.
    """
    if msg is _NOT_JSON or not isinstance(msg, dict):
        return "bad_start"
    if msg.get("type") != "start":
        return "protocol"
    ok = (
        set(msg) <= set(START_FIELDS)
        and _version(msg.get("protocol", 1)) is not None
        and isinstance(msg.get("provisional", False), bool)
        and (not msg.get("provisional") or _version(msg.get("protocol", 1)) == 1.1)
        and _is_integer(msg.get("sample_rate")) and 8000 <= msg["sample_rate"] <= 192_000
        and isinstance(msg.get("format"), str) and msg["format"] in FORMATS
        and ("channels" not in msg or (_is_integer(msg["channels"]) and 1 <= msg["channels"] <= 8))
        and (msg.get("language") is None or _pattern(msg["language"], LANGUAGE))
        and (msg.get("stream_id") is None or _pattern(msg["stream_id"], STREAM_ID))
        and isinstance(msg.get("realtime", True), bool)
    )
    if not ok:
        return "bad_start"
    if msg.get("language") is not None and msg["language"] != server_language:
        return "unsupported_language"
    return None


def control_fault(text: str) -> str | None:
    """The documented error code of a text message after `start`, or None for `stop`."""
    msg = parse_json(text)
    if isinstance(msg, dict) and msg.get("type") == "stop":
        return None
    return "protocol"  # not JSON, not an object, a second start, an unknown or missing type


def audio_fault(data: bytes, fmt: str, channels: int) -> str | None:
    """`bad_audio` for a binary message that is not whole sample frames or holds NaN/inf f32le, else None."""
    dtype = np.dtype(FORMATS[fmt])
    if len(data) % (dtype.itemsize * channels):
        return "bad_audio"
    if fmt == "f32le" and not np.isfinite(np.frombuffer(data, dtype)).all():
        return "bad_audio"
    return None


def _fatal(sent: int, code: str, started: bool, start: dict | None) -> Expected:
    return Expected(sent, started, code, ERRORS[code].close, "error" if started else None,
                    start.get("stream_id") if start else None, start)


def expect(case: Case, max_message_bytes: int, server_language: str | None = None) -> Expected:
    """What docs/protocol.md promises for `case` on a server with these limits and language."""
    start: dict | None = None
    samples = 0
    for i, frame in enumerate(case.wire()):
        sent = i + 1
        sid = start.get("stream_id") if start else None
        if frame.size > max_message_bytes:  # "the WebSocket layer closes the connection at once with 1009"
            return Expected(sent, start is not None, None, CLOSE["too_big"], None, sid, start, transport=True)
        if frame.kind == "raw_text":  # not UTF-8: RFC 6455 section 8.1 fails the connection with 1007
            return Expected(sent, start is not None, None, CLOSE["invalid_data"], None, sid, start, transport=True)
        if start is None:
            code = "protocol" if frame.kind == "binary" else start_fault(parse_json(frame.data), server_language)
            if code is not None:
                return _fatal(sent, code, False, None)
            start = parse_json(frame.data)
        elif frame.kind == "binary":
            channels = int(start.get("channels", 1))
            code = audio_fault(frame.data, start["format"], channels)
            if code is not None:
                return _fatal(sent, code, True, start)
            samples += len(frame.data) // (np.dtype(FORMATS[start["format"]]).itemsize * channels)
        else:
            code = control_fault(frame.data)
            if code is not None:
                return _fatal(sent, code, True, start)
            return Expected(sent, True, None, CLOSE["normal"], "stop", sid, start,
                            samples if start["sample_rate"] == SAMPLE_RATE else None)
    sent = len(case.wire())
    sid = start.get("stream_id") if start else None
    if case.ending == "idle":  # "idle_timeout ... 1000"; before a start it comes instead of ready, without done
        return Expected(sent, start is not None, "idle_timeout", ERRORS["idle_timeout"].close,
                        "idle_timeout" if start else None, sid, start)
    return Expected(sent, start is not None, None, None, None, sid, start)  # the client ended it


# ---- the bugs found so far ------------------------------------------------------------------------------------
# id -> what goes wrong, and what docs/protocol.md says instead (tests/test_serve_fuzz.py has a reproducer of each).
# The server bugs the first fuzzing runs found (December 2026), all fixed since; tests/test_serve_fuzz.py keeps a
# reproducer of each as a regression test, and `found_bug` still recognises their inputs.
FIXED_BUGS: dict[str, str] = {
    "json-recursion": "JSON nested deeper than the recursion limit ('[' * 5000) raises RecursionError, which the "
                      "session does not catch: 1011, no error, no done (documented: bad_start or protocol, 1008)",
    "unhashable-format": "start.format as a JSON array or object raises TypeError (unhashable) in the format check: "
                         "1011, no error (documented: bad_start, 1008)",
    "surrogate-field-name": "an unknown start field named with a lone surrogate (\\ud800) is echoed raw in the "
                            "bad_start message, which cannot be encoded: no error, 1006 (documented: bad_start, 1008)",
    "pattern-newline": "stream_id and language are matched with re.match, whose `$` matches before a final newline: "
                       "'robot\\n' is taken as a stream_id, 'en\\n' gets unsupported_language (documented: bad_start)",
    "protocol-true": "start.protocol = true is taken as version 1 (True == 1 in Python); documented: any value but 1 "
                     "is refused (bad_start), and the schema's const 1 excludes true",
    "integral-float": "sample_rate 16000.0 or channels 2.0 get bad_start, though the client schema's \"integer\" "
                      "(JSON Schema) accepts them: the server and its schema disagree",
    "f32-overflow": "finite f32le samples near the float32 limit (3.4e38) overflow to inf in the channel mean or the "
                    "resampler: internal, 1011, a server failure (documented: finite samples are accepted; NaN/inf "
                    "input is bad_audio, 1007)",
}


# Bugs found and not yet fixed: their cases are kept out of the generated ones (none now).
KNOWN_BUGS: dict[str, str] = {}


def known_bug(case: Case, max_message_bytes: int = 64 * 1024, server_language: str | None = None) -> str | None:
    """The id in `KNOWN_BUGS` (the bugs not yet fixed) of the bug `case` runs into, or None."""
    bug = found_bug(case, max_message_bytes, server_language)
    return bug if bug in KNOWN_BUGS else None


def found_bug(case: Case, max_message_bytes: int = 64 * 1024, server_language: str | None = None) -> str | None:
    """The id in `FIXED_BUGS` of the bug `case` would have run into, or None.

    It follows the order in which the server checks a start (unknown fields, protocol, the required fields,
    sample_rate, then format), so that a case refused for another reason first is not counted; `f32-overflow`
    stays an over-approximation (the resampler overflows only once it holds enough such samples).
    """
    expected = expect(case, max_message_bytes, server_language)
    sent = [f for f in case.wire()[:expected.sent] if f.size <= max_message_bytes]
    if any(f.kind == "text" and _too_deep(f.data) for f in sent):
        return "json-recursion"
    first = parse_json(sent[0].data) if sent and sent[0].kind == "text" else None
    if not isinstance(first, dict) or first.get("type") != "start":
        return None
    unknown = [k for k in first if k not in START_FIELDS]
    if any(has_surrogate(k) for k in unknown):
        return "surrogate-field-name"
    rate = first.get("sample_rate")
    if not unknown and _version(first.get("protocol", 1)) == 1 and "format" in first \
            and type(rate) is int and 8000 <= rate <= 192_000 and isinstance(first["format"], (list, dict)):
        return "unhashable-format"
    # The rest answer an input wrongly only where nothing else in the start is wrong.
    for name, pattern in (("stream_id", STREAM_ID), ("language", LANGUAGE)):
        v = first.get(name)
        if isinstance(v, str) and v.endswith("\n") and re.fullmatch(pattern, v[:-1]) \
                and start_fault({**first, name: v[:-1]}, server_language) != "bad_start":
            return "pattern-newline"
    if first.get("protocol") is True and start_fault({**first, "protocol": 1}, server_language) != "bad_start":
        return "protocol-true"
    if start_fault(first, server_language) != "bad_start" and any(
            isinstance(first.get(k), float) for k in ("sample_rate", "channels")):
        return "integral-float"
    if expected.started and first["format"] == "f32le" and (rate != SAMPLE_RATE or first.get("channels", 1) != 1) \
            and any(f.kind == "binary" and _f32_peak(f.data) > 1e36 for f in sent[1:]):
        return "f32-overflow"
    return None


def _too_deep(text: str) -> bool:
    """json.loads gives up on `text` with RecursionError (nesting deeper than the recursion limit)."""
    try:
        json.loads(text)
    except RecursionError:
        return True
    except ValueError:
        pass
    return False


def _f32_peak(data: bytes) -> float:
    """The largest finite magnitude in f32le bytes (0.0 for none, or for a partial frame)."""
    if len(data) % 4:
        return 0.0
    x = np.abs(np.frombuffer(data, "<f4"))
    return float(x[np.isfinite(x)].max(initial=0.0))


def has_surrogate(s: str) -> bool:
    """`s` holds a lone surrogate (U+D800-U+DFFF), which has no UTF-8 form."""
    return any(0xD800 <= ord(c) <= 0xDFFF for c in s)


