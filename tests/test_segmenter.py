"""Utterance segmenter and per-stream front end: hysteresis, hangover, rolls, limits, chunking."""

from __future__ import annotations

import numpy as np
import pytest

from crab_rt.errors import AudioError, ConfigError
from crab_rt.runtime.segmenter import FrameBuffer, Segmenter, SegmenterConfig, StreamFrontEnd, Utterance

F = 512  # samples per frame = 32 ms
FS = F / 16000

# 2 frames pre-roll, 1 frame post-roll, 5 frames hangover, 3 frames min speech.
SMALL = SegmenterConfig(pre_roll_ms=64, post_roll_ms=32, min_silence_ms=160, min_speech_ms=96)


def feed(seg: Segmenter, probs, start_frame: int = 0) -> list[tuple[int, Utterance]]:
    """Push frame k filled with the value k; returns (frame index when emitted, utterance)."""
    out = []
    for k, p in enumerate(probs, start=start_frame):
        for u in seg.push(np.full(F, k, np.float32), p):
            out.append((k, u))
    return out


def frame_ids(u: Utterance) -> list[int]:
    """Which frames (by fill value) the utterance audio holds, in order, one entry per frame."""
    return [int(v) for v in u.audio[::F]]


def test_basic_utterance_with_rolls_and_hangover():
    seg = Segmenter(SMALL)
    got = feed(seg, [0.0] * 10 + [0.9] * 10 + [0.0] * 10)
    assert len(got) == 1
    emitted_at, u = got[0]
    assert emitted_at == 24  # silence from frame 20; 5 frames (160 ms) complete at frame 24
    assert u.utterance_index == 0 and not u.forced_split
    assert u.speech_start_s == pytest.approx(10 * FS) and u.speech_end_s == pytest.approx(20 * FS)
    assert u.start_s == pytest.approx(8 * FS) and u.end_s == pytest.approx(21 * FS)
    assert frame_ids(u) == list(range(8, 21))  # 2 pre-roll frames, 10 speech, 1 post-roll
    assert u.audio.dtype == np.float32 and u.audio.size == round(u.duration_s * 16000)
    assert seg.flush() is None and not seg.in_speech


def test_hysteresis_middle_probabilities():
    seg = Segmenter(SMALL)
    assert feed(seg, [0.45] * 50) == []  # between thresholds never starts speech
    assert seg.flush() is None
    seg.reset()
    # Inside speech, 0.45 is neither speech start nor silence: the utterance stays open.
    got = feed(seg, [0.9] * 5 + [0.45] * 20 + [0.9] * 5 + [0.0] * 10)
    assert len(got) == 1 and got[0][1].speech_end_s == pytest.approx(30 * FS)
    # Once a silence run started, middle values do not cancel it; only >= start does.
    seg.reset()
    got = feed(seg, [0.9] * 5 + [0.1, 0.1, 0.45, 0.45, 0.45] + [0.0] * 3)
    assert len(got) == 1 and got[0][0] == 9 and got[0][1].speech_end_s == pytest.approx(5 * FS)
    seg.reset()
    got = feed(seg, [0.9] * 5 + [0.1, 0.1, 0.6] + [0.0] * 10)
    assert len(got) == 1 and got[0][1].speech_end_s == pytest.approx(8 * FS)


def test_hangover_joins_short_pauses():
    seg = Segmenter(SMALL)
    joined = feed(seg, [0.9] * 5 + [0.0] * 4 + [0.9] * 5 + [0.0] * 6)
    assert [(u.speech_start_s, u.speech_end_s) for _, u in joined] == [(0.0, pytest.approx(14 * FS))]
    seg.reset()
    split = feed(seg, [0.9] * 5 + [0.0] * 5 + [0.9] * 5 + [0.0] * 6)
    assert [u.speech_start_s for _, u in split] == [0.0, pytest.approx(10 * FS)]
    assert [u.utterance_index for _, u in split] == [0, 1]


def test_min_speech_drops_short_bursts():
    seg = Segmenter(SMALL)
    got = feed(seg, [0.0] * 3 + [0.9] * 2 + [0.0] * 8 + [0.9] * 3 + [0.0] * 8)
    assert len(got) == 1
    u = got[0][1]
    assert u.speech_start_s == pytest.approx(13 * FS) and u.utterance_index == 0


def test_pre_roll_limited_at_stream_start_and_ring_bounded():
    seg = Segmenter(SMALL)
    u = feed(seg, [0.9] * 4 + [0.0] * 6)[0][1]
    assert u.start_s == 0.0 and frame_ids(u)[0] == 0
    seg.reset()
    u = feed(seg, [0.0] + [0.9] * 4 + [0.0] * 6)[0][1]
    assert frame_ids(u)[:2] == [0, 1] and u.start_s == 0.0
    # A long silence keeps only about pre_roll_ms of audio.
    seg = Segmenter(SegmenterConfig(pre_roll_ms=300))
    for _ in range(2000):
        seg.push(np.zeros(F, np.float32), 0.0)
    assert seg._ring_len <= 4800 + F


def test_pre_roll_exact_samples_with_default_config():
    seg = Segmenter()  # 300 ms = 4800 samples pre-roll, 100 ms = 1600 post-roll
    audio = np.arange(40 * F, dtype=np.float32)
    probs = [0.0] * 20 + [0.9] * 10 + [0.0] * 10
    out = []
    for k, p in enumerate(probs):
        out += seg.push(audio[k * F : (k + 1) * F], p)
    out += [seg.flush()] if seg.in_speech else []
    (u,) = out
    assert u.audio[0] == 20 * F - 4800 and u.audio.size == 4800 + 10 * F + 1600
    np.testing.assert_array_equal(u.audio, audio[20 * F - 4800 : 30 * F + 1600])


def test_max_length_split_is_contiguous():
    cfg = SegmenterConfig(pre_roll_ms=64, post_roll_ms=32, min_silence_ms=160, min_speech_ms=96, max_utterance_s=0.5)
    seg = Segmenter(cfg)
    audio = np.arange(60 * F, dtype=np.float32)
    probs = [0.0] * 5 + [0.9] * 40 + [0.0] * 15
    out = []
    for k, p in enumerate(probs):
        out += seg.push(audio[k * F : (k + 1) * F], p)
    assert len(out) >= 3
    assert all(u.audio.size <= 8000 for u in out)
    assert [u.forced_split for u in out] == [True] * (len(out) - 1) + [False]
    assert out[0].audio.size == 8000
    for a, b in zip(out, out[1:]):
        assert b.start_s == pytest.approx(a.end_s)  # no gap, no overlap
    joined = np.concatenate([u.audio for u in out])
    first = int(round(out[0].start_s * 16000))
    np.testing.assert_array_equal(joined, audio[first : first + joined.size])
    assert out[-1].speech_end_s == pytest.approx(45 * FS)


def _talk_probs(n_frames: int) -> list[float]:
    """Speech-like VAD stream: 5 silent frames, then 0.8 s phrases with 0.19 s pauses (shorter than the
    hangover, so one long utterance), the pauses dipping below end_threshold; 15 silent frames at the end."""
    probs = [0.0] * 5
    while len(probs) < n_frames - 15:
        probs += [0.9] * 19 + [0.1] * 6
    return probs[: n_frames - 15] + [0.0] * 15


@pytest.mark.parametrize("phase", range(0, 25, 3))
def test_forced_splits_of_continuous_speech_are_sample_contiguous(phase):
    # 30 s of talk with short pauses, max_utterance_s 12 (default rolls: 300 ms pre, 100 ms post).
    # The phase moves the cuts: at phase 0 the limit falls in a pause (a silence run in progress) and the
    # piece after that cut used to start with 300 ms of pre-roll the previous piece had already delivered;
    # other phases cut mid-phrase, exactly at the limit.
    seg = Segmenter(SegmenterConfig(max_utterance_s=12.0))
    n = int(30 * 16000 / F) + 1
    audio = np.arange(n * F, dtype=np.float32)  # every sample distinct
    probs = [0.0] * phase + _talk_probs(n - phase)
    out = []
    for k, p in enumerate(probs):
        out += seg.push(audio[k * F : (k + 1) * F], p)
    last = seg.flush()
    out += [last] if last is not None else []
    assert len(out) == 3, [(u.start_s, u.end_s) for u in out]
    assert [u.forced_split for u in out] == [True, True, False]
    assert [u.utterance_index for u in out] == [0, 1, 2]
    assert all(u.audio.size <= 12 * 16000 for u in out)
    for a, b in zip(out, out[1:]):
        a_end, b_start = int(round(a.end_s * 16000)), int(round(b.start_s * 16000))
        assert b_start == a_end, f"piece {b.utterance_index} starts at {b.start_s} s, previous ends at {a.end_s} s"
        assert b.start_s == a.end_s
        assert b.audio[0] == a.audio[-1] + 1  # the very next sample
    first = int(round(out[0].start_s * 16000))
    joined = np.concatenate([u.audio for u in out])
    np.testing.assert_array_equal(joined, audio[first : first + joined.size])  # nothing lost, nothing twice
    assert out[-1].speech_end_s == pytest.approx((n - 15) * FS, abs=7 * FS)


def test_forced_split_in_a_pause_resumes_as_the_same_utterance():
    # Limit 15.6 frames; a pause starts at frame 12 (silence run), speech resumes at frame 16 (before the
    # 5-frame hangover ends it): the second piece starts at the cut, not with pre-roll before frame 16.
    cfg = SegmenterConfig(pre_roll_ms=64, post_roll_ms=32, min_silence_ms=160, min_speech_ms=96, max_utterance_s=0.5)
    seg = Segmenter(cfg)
    got = feed(seg, [0.9] * 12 + [0.0] * 4 + [0.9] * 6 + [0.0] * 10)
    assert [u.forced_split for _, u in got] == [True, False]
    (k0, a), (_, b) = got
    assert k0 == 15 and frame_ids(a) == list(range(13)) and a.speech_end_s == pytest.approx(12 * FS)
    assert b.start_s == a.end_s and frame_ids(b) == list(range(13, 23))
    assert b.speech_start_s == pytest.approx(13 * FS) and b.speech_end_s == pytest.approx(22 * FS)


def test_pre_roll_never_repeats_delivered_audio():
    # pre_roll (400 ms) longer than min_silence - post_roll (200 - 100 ms): the next utterance's pre-roll
    # stops where the previous one's audio ended.
    seg = Segmenter(SegmenterConfig(pre_roll_ms=400, post_roll_ms=100, min_silence_ms=200, min_speech_ms=96))
    audio = np.arange(60 * F, dtype=np.float32)
    probs = [0.0] * 20 + [0.9] * 10 + [0.0] * 7 + [0.9] * 10 + [0.0] * 13
    out = []
    for k, p in enumerate(probs):
        out += seg.push(audio[k * F : (k + 1) * F], p)
    a, b = out
    assert b.start_s == pytest.approx(a.end_s) and b.audio[0] == a.audio[-1] + 1
    assert b.speech_start_s == pytest.approx(37 * FS)


def test_max_length_cuts_at_silence_when_one_is_running():
    cfg = SegmenterConfig(pre_roll_ms=0, post_roll_ms=32, min_silence_ms=320, min_speech_ms=96, max_utterance_s=0.5)
    seg = Segmenter(cfg)  # limit 8000 samples = 15.6 frames; silence starts at frame 12
    got = feed(seg, [0.9] * 12 + [0.0] * 20)
    (k, u), = got
    assert k == 15 and u.forced_split
    assert u.speech_end_s == pytest.approx(12 * FS) and frame_ids(u) == list(range(13))


def test_flush_at_end_of_input():
    seg = Segmenter(SMALL)
    feed(seg, [0.0] * 3 + [0.9] * 6)
    u = seg.flush()
    assert u is not None and u.speech_end_s == pytest.approx(9 * FS) and u.end_s == pytest.approx(9 * FS)
    assert seg.flush() is None
    seg.reset()
    feed(seg, [0.9] * 6 + [0.0] * 3)  # silence run in progress: speech ended where it began
    u = seg.flush()
    assert u.speech_end_s == pytest.approx(6 * FS) and u.end_s == pytest.approx(7 * FS)
    seg.reset()
    feed(seg, [0.9] * 2)
    assert seg.flush() is None  # shorter than min_speech_ms


def test_reset_restarts_timeline_and_index():
    seg = Segmenter(SMALL)
    first = feed(seg, [0.0] * 4 + [0.9] * 5 + [0.0] * 6)
    seg.reset()
    second = feed(seg, [0.0] * 4 + [0.9] * 5 + [0.0] * 6)
    assert [(u.utterance_index, u.start_s, u.end_s) for _, u in first] == [
        (u.utterance_index, u.start_s, u.end_s) for _, u in second
    ]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"end_threshold": 0.5}, r"end_threshold = 0.5 .*\[0, start_threshold = 0.5\)"),
        ({"start_threshold": 1.5}, r"start_threshold = 1.5 .*\(0, 1\]"),
        ({"min_silence_ms": 0}, r"min_silence_ms = 0 .*\(0, 60000\]"),
        ({"post_roll_ms": 600}, r"post_roll_ms = 600 .*min_silence_ms = 500"),
        ({"pre_roll_ms": -1}, r"pre_roll_ms = -1"),
        ({"max_utterance_s": 0.5}, r"max_utterance_s = 0.5 .*\(0.65, 3600\]"),
        ({"sample_rate_hz": 8000}, r"sample_rate_hz = 8000 .*16000"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SegmenterConfig(**kwargs).validate()
    with pytest.raises(ConfigError, match=match):
        Segmenter(SegmenterConfig(**kwargs))


def test_frame_buffer():
    buf = FrameBuffer()
    assert buf.push(np.ones(300, np.float32)).shape == (0, 512)
    frames = buf.push(np.full(1000, 2, np.float32))
    assert frames.shape == (2, 512) and buf.pending_samples == 1300 - 1024
    assert frames[0, 299] == 1 and frames[0, 300] == 2
    assert buf.flush().size == 276 and buf.pending_samples == 0


# -- with the real VAD ---------------------------------------------------------




def run_stream(vad, audio, chunk, config=None):
    fe = StreamFrontEnd(vad, config)
    out = []
    for i in range(0, audio.size, chunk):
        out += fe.accept(audio[i : i + chunk])
    return out + fe.flush()


def test_jfk_regions_match_readme(vad, jfk):
    utts = run_stream(vad, jfk, jfk.size)
    readme = [(0.29, 2.27), (3.30, 4.38), (5.41, 7.65), (8.19, 11.0)]
    assert len(utts) == 4
    for u, (s, _) in zip(utts, readme):
        assert abs(u.speech_start_s - s) <= 0.1
        assert u.start_s == pytest.approx(max(0.0, u.speech_start_s - 0.3))
        assert u.end_s == pytest.approx(min(11.0, u.speech_end_s + 0.1))
    for u, (_, e) in zip(utts[:3], readme):
        assert abs(u.speech_end_s - e) <= 0.1
    # The README's last region runs to the end of the file (faster-whisper closes open
    # speech there); ours ends where the final silence run (about 0.5 s) begins.
    assert 10.4 <= utts[-1].speech_end_s <= 10.6
    assert all(np.all(np.isfinite(u.audio)) for u in utts)


@pytest.mark.parametrize("chunk", [160, 333, 512, 4096, 17_000])
def test_chunk_size_does_not_change_utterances(vad, jfk, chunk):
    ref = run_stream(vad, jfk, jfk.size)
    got = run_stream(vad, jfk, chunk)
    assert [(u.utterance_index, u.start_s, u.end_s, u.speech_start_s, u.speech_end_s) for u in got] == [
        (u.utterance_index, u.start_s, u.end_s, u.speech_start_s, u.speech_end_s) for u in ref
    ]
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a.audio, b.audio)


def test_front_end_contract(vad, jfk):
    fe = StreamFrontEnd(vad)
    assert fe.accept(np.zeros(0, np.float32)) == []
    first = fe.accept(jfk) + fe.flush()
    assert fe.flush() == []
    with pytest.raises(RuntimeError, match="after flush"):
        fe.accept(jfk[:100])
    fe.reset()
    again = fe.accept(jfk) + fe.flush()
    assert [(u.start_s, u.end_s) for u in again] == [(u.start_s, u.end_s) for u in first]
    with pytest.raises(AudioError, match="1-D"):
        fe.accept(np.zeros((10, 2), np.float32))
    with pytest.raises(AudioError, match="dtype int16"):
        fe.accept(np.zeros(10, np.int16))
    with pytest.raises(AudioError, match="NaN"):
        fe.accept(np.array([0.0, np.nan], np.float32))


def test_silence_gives_no_utterance(vad):
    fe = StreamFrontEnd(vad)
    rng = np.random.default_rng(0)
    out = fe.accept((rng.standard_normal(16000 * 3) * 1e-4).astype(np.float32)) + fe.flush()
    assert out == []


def test_speech_marks_bracket_each_region_and_precede_its_utterance():
    log: list = []
    seg = Segmenter(SMALL, on_mark=lambda m: log.append(("mark", m.kind, m.time_s, m.utterance_id)))
    for k, p in enumerate([0.0] * 10 + [0.9] * 10 + [0.0] * 10 + [0.9] * 2 + [0.0] * 10):
        for u in seg.push(np.full(F, k, np.float32), p):
            log.append(("utterance", u.utterance_index))
    assert log == [
        ("mark", "speech_start", pytest.approx(10 * FS), None),
        ("mark", "speech_end", pytest.approx(20 * FS), 0),  # where the silence run began
        ("utterance", 0),  # after its speech_end
        ("mark", "speech_start", pytest.approx(30 * FS), None),
        ("mark", "speech_end", pytest.approx(32 * FS), None),  # 2 frames < min_speech_ms: no utterance
    ]


def test_speech_marks_ignore_forced_splits_and_close_at_flush():
    marks = []
    cfg = SegmenterConfig(pre_roll_ms=0, post_roll_ms=0, min_silence_ms=160, min_speech_ms=96, max_utterance_s=0.5)
    seg = Segmenter(cfg, on_mark=marks.append)
    got = feed(seg, [0.9] * 40)  # 1.28 s of speech, split every 0.5 s
    assert [u.forced_split for _, u in got] == [True, True]
    assert [m.kind for m in marks] == ["speech_start"]  # a split is not a boundary: the region goes on
    last = seg.flush()
    assert last is not None and [(m.kind, m.utterance_id) for m in marks] == [("speech_start", None),
                                                                             ("speech_end", 2)]
    assert marks[1].time_s == pytest.approx(40 * FS)
