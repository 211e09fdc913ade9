"""Hypothesis strategies for fuzzing `crab-rt serve`: client connections (`cases()`) to judge with
crab_bench.fuzz_oracle.

Owns the generators: valid `start` messages and mutated ones (wrong types; missing, unknown and duplicate fields
written as raw JSON text; out-of-range numbers; huge strings; unicode with lone surrogates and NUL; deep nesting),
text that is not JSON or not an object, `stop` spelled several ways, a second `start` and unknown message types,
and binary frames (partial sample frames, NaN/inf f32le, extreme values, empty, at and over the size limit, audio
before `start`), in any order. No network code: crab_bench.fuzz_client runs the cases.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from crab_bench.fuzz_oracle import (
    FORMATS,
    START_FIELDS,
    STOP,
    STREAM_ID,
    Case,
    Frame,
    expect,
    has_surrogate,
    parse_json,
    start_fault,
)
from crab_rt.audio import SAMPLE_RATE

__all__ = ["MAX_AUDIO_S", "RawJson", "render", "json_values", "start_texts", "control_texts", "audio_frames", "cases"]

# Accepted audio per case stays under the server's realtime slack (2 s), so that no case is paced.
MAX_AUDIO_S = 1.5


# ---- JSON text with the quirks a fuzzer wants -----------------------------------------------------------------
@dataclass(frozen=True)
class RawJson:
    """A JSON fragment written as is: numbers json.dumps cannot write (10**5000), or nesting."""

    text: str


def render(value: object, ascii_only: bool = True, pairs: bool = False) -> str:
    """JSON text of `value`. Objects may be lists of (key, value) pairs (`pairs`), so duplicate keys survive;
    strings with lone surrogates are always \\u-escaped (they have no UTF-8 form)."""
    if isinstance(value, RawJson):
        return value.text
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=ascii_only or has_surrogate(value))
    if isinstance(value, tuple) and pairs:
        return "{" + ", ".join(f"{render(k, ascii_only)}: {render(v, ascii_only, pairs)}" for k, v in value) + "}"
    if isinstance(value, dict):
        return render(tuple(value.items()), ascii_only, True)
    if isinstance(value, list):
        return "[" + ", ".join(render(v, ascii_only, pairs) for v in value) + "]"
    return json.dumps(value)  # None, bools, ints, floats (NaN and Infinity as Python writes them)


# ---- strategies -----------------------------------------------------------------------------------------------
def _strings(max_size: int = 12) -> st.SearchStrategy[str]:
    """Any unicode, lone surrogates and NUL included."""
    return st.text(st.characters(exclude_categories=()), max_size=max_size)


def _huge_strings() -> st.SearchStrategy[str]:
    """Long strings of one character (ASCII, NUL, 2- and 4-byte UTF-8, a lone surrogate), some over 64 KiB."""
    return st.builds(lambda c, n: c * n, st.sampled_from(["a", "\0", "é", "😀", "\ud800", "\n"]),
                     st.sampled_from([64, 65, 1000, 20_000, 40_000, 70_000]))


def _deep(depth: int, kind: str) -> RawJson:
    if kind == "list":
        return RawJson("[" * depth + "]" * depth)
    return RawJson('{"a": ' * depth + "1" + "}" * depth)


def json_values() -> st.SearchStrategy[object]:
    """Any JSON value, with huge numbers, NaN/Infinity, surrogates, NUL, long strings and deep nesting."""
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70), st.floats(),
        st.builds(lambda n: RawJson("9" * n), st.sampled_from([19, 400, 4300, 4301, 6000])),
        _strings(), _huge_strings(),
        st.builds(_deep, st.sampled_from([2, 30, 5000, 20_000]), st.sampled_from(["list", "object"])),
    )
    return st.recursive(scalars, lambda kids: st.lists(kids, max_size=3)
                        | st.dictionaries(_strings(6), kids, max_size=3), max_leaves=6)


def _valid_starts() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {"type": st.just("start"),
         "sample_rate": st.sampled_from([SAMPLE_RATE] * 6 + [8000, 11025, 22050, 44100, 48000, 96000, 192000])
         | st.integers(8000, 192_000),
         "format": st.sampled_from(["s16le", "f32le"])},
        optional={"protocol": st.sampled_from([1, 1.0, 1.1]), "channels": st.integers(1, 8),
                  "language": st.none(), "stream_id": st.none() | st.from_regex(STREAM_ID, fullmatch=True),
                  "realtime": st.booleans()},
    )


# Values at and across each start field's documented limits (some valid), beside any JSON value.
EDGES: dict[str, list] = {
    "type": ["stop", "START", "Start", " start", "start ", "", None, 1, True, ["start"], {"type": "start"}],
    "protocol": [0, 2, -1, "1", "1.1", None, [1], 1.5, 1.10001, 1.01, 2**64, True, False],
    "sample_rate": [0, -1, -SAMPLE_RATE, 1, 7999, 8000, 16000.0, 192000, 192001, 384000, 2**31, 2**63, 10**30, -(2**63),
                    16000.5, 1e400, -1e400, float("nan"), "16000", None, [SAMPLE_RATE], False, True],
    "format": ["S16LE", "s16", "f32", "pcm", "", "s16le ", "f32le\0", "s16le\n", None, 1, ["s16le"], {"s16le": 1}],
    "channels": [0, -1, 9, 8, 1, 2.0, 255, 2**40, 1.5, "2", None, True, [1]],
    "language": ["en", "de", "eng", "e", "EN", "engl", "en-US", "", "en\n", "\ud800\ud800", 5, ["en"], False],
    "stream_id": ["", "-a", ".a", "a" * 64, "a" * 65, "a b", "a\n", "a\0", "é", "a/b", "a:b@c.d-e_f", 7, True,
                  {"id": "a"}, "\ud800"],
    "realtime": [0, 1, "true", "false", None, [], {}, 1.0],
    "provisional": [True, False, 0, 1, "true", None, [], 1.0],
}
TYPO_FIELDS = ["sample_rte", "Format", "stream-id", "rate", "type ", "Type", "realTime", "channel", "lang", "",
               "\0", "\ud800", "\udfff", "😀", "protocol\n"]


@st.composite
def start_texts(draw: st.DrawFn) -> tuple[str, tuple[str, ...]]:
    """A first message: a valid start, mutated 0-3 times and written in one of several JSON spellings."""
    pairs = list(draw(_valid_starts()).items())
    tags = ["start"]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        op = draw(st.sampled_from(["drop", "unknown", "edge", "edge", "wrong_type", "duplicate", "huge"]))
        tags.append(op)
        keys = [k for k, _ in pairs]
        if op == "drop" and pairs:
            del pairs[draw(st.integers(0, len(pairs) - 1))]
        elif op == "unknown":
            name = draw(st.sampled_from(TYPO_FIELDS) | _strings().filter(lambda s: s not in START_FIELDS))
            pairs.insert(draw(st.integers(0, len(pairs))), (name, draw(json_values())))
        elif op in ("edge", "wrong_type", "huge"):
            name = draw(st.sampled_from(START_FIELDS))
            value = draw({"edge": st.sampled_from(EDGES[name]), "wrong_type": json_values(),
                          "huge": _huge_strings()}[op])
            pairs = [(k, v) for k, v in pairs if k != name]
            pairs.insert(draw(st.integers(0, len(pairs))), (name, value))
        elif op == "duplicate" and keys:  # written twice; the last one counts (as in Python and JavaScript)
            name = draw(st.sampled_from(keys))
            value = draw(st.sampled_from(EDGES.get(name, [None])) | json_values())
            pairs.insert(draw(st.integers(0, len(pairs))), (name, value))
    ascii_only = draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:  # the whole object shuffled
        pairs = draw(st.permutations(pairs))
    return render(tuple(pairs), ascii_only, pairs=True), tuple(tags)


NOT_JSON = ["", " ", "{start", "{'type': 'start'}", "stop", "start", "\0", '{"type": "start"', "{]", "[1,]",
            '{"type": "stop",}', "\ufeff{\"type\": \"stop\"}", "null null", "{\"type\": \"stop\"} {}", "//"]


def _not_objects() -> st.SearchStrategy[tuple[str, tuple[str, ...]]]:
    """Text that is not JSON, JSON that is not an object, deep nesting."""
    text = st.text(max_size=40)  # NUL included; lone surrogates only in JSON escapes (json_values)
    not_json = (st.sampled_from(NOT_JSON) | text | _huge_strings()).map(lambda t: (t, ("not_json",)))
    values = json_values().filter(lambda v: not isinstance(v, dict)).map(lambda v: (render(v), ("not_object",)))
    deep = st.builds(_deep, st.sampled_from([5000, 30_000]), st.sampled_from(["list", "object"])).map(
        lambda r: (r.text, ("deep",)))
    return st.one_of(not_json, values, deep)


def control_texts() -> st.SearchStrategy[tuple[str, tuple[str, ...]]]:
    """A text message after `start`: stop spelled several ways, a second start, unknown types, not JSON."""
    stops = st.sampled_from([STOP, '{ "type" : "stop" }', '{"type": "stop", "extra": 1}',
                             '{"type": "x", "type": "stop"}', '{"type":"stop","type":"stop"}',
                             '{"\\u0074ype": "st\\u006fp"}']).map(lambda t: (t, ("stop",)))
    not_stops = st.sampled_from(['{"type": "stop", "type": "x"}', '{"type": "STOP"}', '{"type": "stop "}',
                                 '{"type": null}', "{}", '{"kind": "stop"}', '["stop"]', '"stop"'])
    unknown = st.one_of(not_stops, st.builds(lambda v: render({"type": v}), json_values())).map(
        lambda t: (t, ("unknown_type",)))
    second = start_texts().map(lambda s: (s[0], ("second_start",)))
    return st.one_of(stops, unknown, second, _not_objects())


def _pcm(fmt: str, channels: int, frames: int, fill: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    n = frames * channels
    if fill == "zeros":
        x = np.zeros(n)
    elif fill == "tone":
        x = 0.5 * np.sin(np.arange(n) * 0.07)
    elif fill == "full_scale":
        x = rng.choice([-1.0, 1.0], n)
    else:
        x = rng.uniform(-1, 1, n)
    if fmt == "s16le":
        return np.clip(x * 32768, -32768, 32767).astype("<i2").tobytes()
    return x.astype("<f4").tobytes()


NON_FINITE = [b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xff", b"\x01\x00\x80\x7f", b"\xff\xff\xff\xff"]


@st.composite
def audio_frames(draw: st.DrawFn, fmt: str, channels: int, max_message_bytes: int) -> tuple[bytes, str]:
    """A binary message for a stream of `fmt` x `channels`, and what kind it is."""
    width = np.dtype(FORMATS[fmt]).itemsize * channels
    kind = draw(st.sampled_from(["whole"] * 6 + ["partial", "empty", "non_finite", "extreme", "at_limit",
                                                  "oversized"]))
    frames = draw(st.integers(1, max(1, 4096 // width)))
    fill = draw(st.sampled_from(["zeros", "noise", "tone", "full_scale"]))
    seed = draw(st.integers(0, 2**16))
    if kind == "empty":
        return b"", kind
    if kind == "partial":
        return _pcm(fmt, channels, frames, fill, seed) + bytes(draw(st.integers(1, width - 1))), kind
    if kind == "at_limit":  # the largest message allowed (not always whole frames: 65536 % 6 != 0)
        return bytes(max_message_bytes), kind
    if kind == "oversized":
        return bytes(max_message_bytes + draw(st.sampled_from([1, 2, 3, 4, 1024]))), kind
    data = bytearray(_pcm(fmt, channels, frames, fill, seed))
    if kind == "non_finite" and fmt != "f32le":
        kind = "whole"  # s16le has no NaN
    if kind == "non_finite":
        at = 4 * draw(st.integers(0, len(data) // 4 - 1))
        data[at:at + 4] = draw(st.sampled_from(NON_FINITE))
    elif kind == "extreme":  # finite, out of [-1, 1] (f32le) or the int16 extremes: not an error
        value = draw(st.sampled_from([3.4e38, -3.4e38, 1e30, 1.5, -2.0, 1e-45]))
        data = bytearray(np.full(len(data) // np.dtype(FORMATS[fmt]).itemsize,
                                 value if fmt == "f32le" else np.sign(value) * 32767,
                                 FORMATS[fmt]).tobytes())
    return bytes(data), kind


def _seconds(data: bytes, start: dict) -> float:
    width = np.dtype(FORMATS[start["format"]]).itemsize * int(start.get("channels", 1))
    return len(data) / width / start["sample_rate"]


def _text_frame(text: str) -> Frame:
    """A text frame; a str with lone surrogates has no UTF-8 form, so it goes as those bytes (not UTF-8)."""
    if has_surrogate(text):
        return Frame("raw_text", text.encode("utf-8", "surrogatepass"))
    return Frame("text", text)


RAW_TEXT = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b'{"type": "stop"}\xff', b'{"type": "\xe2\x82"}', b"\xc0\xaf",
            b"\xf8\x88\x80\x80\x80"]


@st.composite
def cases(draw: st.DrawFn, max_message_bytes: int = 64 * 1024, idle: bool = False, max_frames: int = 6,
          server_language: str | None = None) -> Case:
    """One connection: a first message (usually a start, maybe mutated; or audio, a stop, not JSON, ...), up to
    `max_frames` more (audio and control in any order), then an ending ("idle" only when `idle`).

    The frames are cut after the one that ends the stream (`expect`), and a realtime stream's audio is kept
    under MAX_AUDIO_S so that the server never paces a case.
    """
    first_kind = draw(st.sampled_from(["start"] * 7 + ["audio", "not_object", "control", "raw_text"]))
    tags: list[str] = []
    if first_kind == "start":
        text, t = draw(start_texts())
        first = _text_frame(text)
    elif first_kind == "audio":
        fmt = draw(st.sampled_from(list(FORMATS)))
        data, kind = draw(audio_frames(fmt, 1, max_message_bytes))
        first, t = Frame("binary", data), ("audio_before_start", kind)
    elif first_kind == "not_object":
        text, t = draw(_not_objects())
        first = _text_frame(text)
    elif first_kind == "control":
        text, t = draw(control_texts())
        first, t = _text_frame(text), ("control_first", *t)
    else:
        first, t = Frame("raw_text", draw(st.sampled_from(RAW_TEXT))), ("raw_text",)
    tags += t
    frames = [first]
    start = parse_json(first.data) if first.kind == "text" else None
    started = first.kind == "text" and first.size <= max_message_bytes and start_fault(start, server_language) is None
    if started:
        audio_s = 0.0
        fmt, channels = start["format"], int(start.get("channels", 1))
        for _ in range(draw(st.integers(0, max_frames))):
            what = draw(st.sampled_from(["audio"] * 8 + ["control", "raw_text"]))
            if what == "audio":
                data, kind = draw(audio_frames(fmt, channels, max_message_bytes))
                if start.get("realtime", True) and audio_s + _seconds(data, start) > MAX_AUDIO_S \
                        and len(data) <= max_message_bytes:
                    continue
                audio_s += _seconds(data, start)
                frames.append(Frame("binary", data))
                tags.append(kind)
            elif what == "control":
                text, t = draw(control_texts())
                frames.append(_text_frame(text))
                tags += t
            else:
                frames.append(Frame("raw_text", draw(st.sampled_from(RAW_TEXT))))
                tags.append("raw_text")
    ending = draw(st.sampled_from(["stop"] * 8 + ["close", "abort"] + (["idle"] if idle else [])))
    tags = tuple(dict.fromkeys(tags))
    quiet = expect(Case(tuple(frames), "idle"), max_message_bytes, server_language)
    if quiet.error != "idle_timeout":  # a frame ended the stream: the rest, and the ending, are never sent
        return Case(tuple(frames[:quiet.sent]), "stop", tags)
    return Case(tuple(frames), ending, tags)
