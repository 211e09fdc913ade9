"""Utterance segmentation of one audio stream from per-frame speech probabilities.

Owns the per-stream front end: `FrameBuffer` (arbitrary chunks to 512-sample
frames), `Segmenter` (hysteresis, hangover, pre-roll, post-roll, length limit)
and `StreamFrontEnd`, which ties a shared `SileroVad` to one stream's
`VadState`, frame buffer and segmenter.

Streaming contract:
- `Segmenter.push(frame, prob)` consumes the next frame of the stream (normally
  512 samples; any length works, a frame is the unit of decision) with its
  speech probability and returns the utterances completed by it (0 or 1, more
  only for frames longer than the length limit).
- `Segmenter.flush()` ends the speech in flight (end of input); the timeline
  continues if more frames are pushed later. `reset()` returns to a new stream
  at t = 0.
- `StreamFrontEnd.accept(samples)` takes any number of float32 16 kHz samples;
  `flush()` pads and scores the partial last frame, then flushes the
  segmenter. Calling `accept` after `flush` is an error until `reset()`.

Decision rule (the one faster-whisper's `get_speech_timestamps` uses, so the
regions agree with it): speech starts at the first frame with
prob >= start_threshold; during speech, a frame with prob < end_threshold starts
a silence run that only a frame with prob >= start_threshold cancels; the
utterance ends when the run has lasted min_silence_ms (counting the current
frame), and the speech is taken to end where the run began. Segments whose
speech is shorter than min_speech_ms are dropped.

Each `Utterance` carries two pairs of times, in seconds from the stream start:
`speech_start_s`/`speech_end_s` are the detected speech (frame-aligned), and
`start_s`/`end_s` delimit `audio`, which adds up to pre_roll_ms before and
post_roll_ms after (less at the stream start or at a forced split), so
`len(audio) == round((end_s - start_s) * SAMPLE_RATE)`. No sample is ever
delivered twice: pre-roll never reaches back before the end of the previous
utterance's audio. The audio of an utterance never exceeds max_utterance_s: at
the limit it is cut (`forced_split=True`); if a silence run is in progress the
cut is made where the run began (plus post-roll), otherwise exactly at the
limit. Either way the utterance stays open after the cut: the next piece starts
exactly where the cut piece ended (`next.start_s == prev.end_s`, no pre-roll,
no gap, no overlap), and is dropped if the silence run then ends it before any
new speech.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from crab_rt.audio import SAMPLE_RATE, as_mono_float32
from crab_rt.errors import AudioError, ConfigError
from crab_rt.runtime.vad import FRAME_SAMPLES, SileroVad, VadState

__all__ = ["SegmenterConfig", "SpeechMark", "Utterance", "Segmenter", "FrameBuffer", "StreamFrontEnd"]


@dataclass(frozen=True)
class SegmenterConfig:
    """How speech probabilities become utterances.

    Attributes:
        start_threshold: speech starts at a frame with prob >= this.
        end_threshold: frames below this count as silence; must be < start_threshold.
        min_speech_ms: segments with less detected speech are dropped.
        min_silence_ms: hangover: silence needed to end an utterance.
        pre_roll_ms: audio kept before the detected start (first syllable).
        post_roll_ms: audio kept after the detected end; <= min_silence_ms.
        max_utterance_s: longest utterance audio; longer speech is split.
        sample_rate_hz: stream rate; Silero v6 runs at 16 kHz only.
    """

    start_threshold: float = 0.5
    end_threshold: float = 0.35
    min_speech_ms: float = 250.0
    min_silence_ms: float = 500.0
    pre_roll_ms: float = 300.0
    post_roll_ms: float = 100.0
    max_utterance_s: float = 12.0
    sample_rate_hz: int = SAMPLE_RATE

    def validate(self) -> SegmenterConfig:
        """Check every field; returns self.

        Raises:
            ConfigError: naming the field, its value and the allowed range.
        """

        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"segmenter.{name} = {getattr(self, name)!r} is out of range: {allowed}")

        if not 0.0 < self.start_threshold <= 1.0:
            raise bad("start_threshold", "must be in (0, 1]")
        if not 0.0 <= self.end_threshold < self.start_threshold:
            raise bad("end_threshold", f"must be in [0, start_threshold = {self.start_threshold})")
        if not 0.0 <= self.min_speech_ms <= 60_000:
            raise bad("min_speech_ms", "must be in [0, 60000]")
        if not 0.0 < self.min_silence_ms <= 60_000:
            raise bad("min_silence_ms", "must be in (0, 60000]")
        if not 0.0 <= self.pre_roll_ms <= 10_000:
            raise bad("pre_roll_ms", "must be in [0, 10000]")
        if not 0.0 <= self.post_roll_ms <= self.min_silence_ms:
            raise bad("post_roll_ms", f"must be in [0, min_silence_ms = {self.min_silence_ms}]")
        floor_s = (self.pre_roll_ms + self.min_speech_ms + self.post_roll_ms) / 1000.0
        if not floor_s < self.max_utterance_s <= 3600.0:
            raise bad(
                "max_utterance_s",
                f"must be in ({floor_s:g}, 3600] (more than pre_roll_ms + min_speech_ms + post_roll_ms)",
            )
        if self.sample_rate_hz != SAMPLE_RATE:
            raise bad("sample_rate_hz", f"must be {SAMPLE_RATE} (Silero VAD v6 runs at 16 kHz only)")
        return self


@dataclass
class Utterance:
    """One segmented utterance of a stream (times in seconds from the stream start).

    Attributes:
        utterance_index: 0, 1, 2, ... per stream.
        start_s, end_s: span of `audio` (pre- and post-roll included).
        audio: float32 [T] mono 16 kHz.
        end_of_speech_time: `time.perf_counter()` when the end was detected.
        forced_split: True when max_utterance_s caused this boundary.
        speech_start_s, speech_end_s: the detected speech (no roll).
    """

    utterance_index: int
    start_s: float
    end_s: float
    audio: np.ndarray = field(repr=False)
    end_of_speech_time: float
    forced_split: bool = False
    speech_start_s: float = 0.0
    speech_end_s: float = 0.0

    @property
    def duration_s(self) -> float:
        """Length of `audio` in seconds."""
        return self.end_s - self.start_s


@dataclass(frozen=True)
class SpeechMark:
    """A boundary of a speech region, as the segmenter decides it (for barge-in: it comes before the event).

    Attributes:
        kind: "speech_start" (the first frame at or above start_threshold) or "speech_end" (the region
            closed: its silence run reached min_silence_ms, or the input ended).
        time_s: stream seconds: where the speech starts, or where the silence run that ended it began.
        utterance_id: for "speech_end", the utterance it closed, or None when it closed none (speech shorter
            than min_speech_ms, or the tail after a forced split held no speech). None for "speech_start".
    """

    kind: str
    time_s: float
    utterance_id: int | None = None


class Segmenter:
    """Per-stream hysteresis segmenter; holds a bounded pre-roll ring, not the stream.

    Args:
        config: segmentation settings (validated here).
        on_mark: called with each `SpeechMark`, in the pushing thread, before the utterance that a
            "speech_end" closes is returned. A forced split is not a mark: the region goes on.

    Raises:
        ConfigError: the config is invalid.
    """

    def __init__(self, config: SegmenterConfig | None = None,
                 on_mark: Callable[[SpeechMark], None] | None = None) -> None:
        self.config = (config or SegmenterConfig()).validate()
        self._on_mark = on_mark
        sr = self.config.sample_rate_hz

        def samples(ms: float) -> int:
            return int(round(ms * sr / 1000.0))

        self._sr = sr
        self._pre = samples(self.config.pre_roll_ms)
        self._post = samples(self.config.post_roll_ms)
        self._min_speech = samples(self.config.min_speech_ms)
        self._min_silence = samples(self.config.min_silence_ms)
        self._max = samples(self.config.max_utterance_s * 1000.0)
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next frame is t = 0 of a new stream."""
        self._pos = 0
        self._ring: deque[np.ndarray] = deque()
        self._ring_len = 0
        self._active = False
        self._buf: list[np.ndarray] = []
        self._buf_len = 0
        self._buf_start = 0
        self._speech_start = 0
        self._silence_start: int | None = None
        self._continuation = False
        self._index = 0
        self._emitted_end = 0  # stream sample just after the last delivered utterance's audio

    @property
    def in_speech(self) -> bool:
        """True while an utterance is open."""
        return self._active

    @property
    def position_s(self) -> float:
        """Seconds of audio pushed since the last reset."""
        return self._pos / self._sr

    @property
    def open_audio_start(self) -> int | None:
        """Stream sample where the open utterance's audio begins (pre-roll included), or None when none is open.

        After a forced split it is where the cut piece ended. An utterance this segmenter returns starts at
        its `open_audio_start` and its audio is a prefix of `open_audio()` (incremental speech encoding relies
        on both).
        """
        return self._buf_start if self._active else None

    def open_audio(self, offset: int = 0) -> np.ndarray:
        """The open utterance's audio buffered so far, from sample `offset` of it on (empty when none is open)."""
        if not self._active:
            return np.zeros(0, dtype=np.float32)
        parts, pos = [], 0
        for chunk in self._buf:
            end = pos + chunk.size
            if end > offset:
                parts.append(chunk[max(offset - pos, 0):])
            pos = end
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def push(self, frame: np.ndarray, prob: float) -> list[Utterance]:
        """Consume the next frame and its speech probability.

        Args:
            frame: float32 samples (normally 512) following the previous frame.
            prob: the VAD's speech probability for this frame.

        Returns:
            The utterances this frame completed (usually none).
        """
        x = np.asarray(frame, dtype=np.float32).reshape(-1)
        if x.size == 0:
            return []
        cfg = self.config
        frame_start = self._pos
        self._pos += x.size
        out: list[Utterance] = []
        if not self._active:
            if prob < cfg.start_threshold:
                self._ring_append(x)
                return out
            pre = self._pre_roll(frame_start)
            self._active = True
            self._continuation = False
            self._silence_start = None
            self._speech_start = frame_start
            self._buf = [pre, x.copy()]
            self._buf_len = pre.size + x.size
            self._buf_start = frame_start - pre.size
            self._ring.clear()
            self._ring_len = 0
            if self._on_mark is not None:
                self._on_mark(SpeechMark("speech_start", frame_start / self._sr))
        else:
            self._buf.append(x.copy())
            self._buf_len += x.size
            if prob >= cfg.start_threshold:
                self._silence_start = None
            elif prob < cfg.end_threshold and self._silence_start is None:
                self._silence_start = frame_start
            if self._silence_start is not None and self._pos - self._silence_start >= self._min_silence:
                u = self._finish(self._silence_start, forced=False)
                return [u] if u is not None else []
        while self._active and self._buf_len >= self._max:
            u = self._split()
            if u is not None:
                out.append(u)
        return out

    def flush(self) -> Utterance | None:
        """End of input: close the speech in flight if it is long enough.

        Returns:
            The last utterance, or None when no speech was open or it was too short.
        """
        if not self._active:
            return None
        end = self._silence_start if self._silence_start is not None else self._pos
        return self._finish(end, forced=False)

    # -- internals -------------------------------------------------------------

    def _ring_append(self, x: np.ndarray) -> None:
        if self._pre == 0:
            return
        self._ring.append(x.copy())
        self._ring_len += x.size
        while self._ring and self._ring_len - self._ring[0].size >= self._pre:
            self._ring_len -= self._ring.popleft().size

    def _pre_roll(self, frame_start: int) -> np.ndarray:
        """The audio just before `frame_start`: at most pre_roll_ms, never audio already delivered."""
        # The ring is contiguous and ends at frame_start.
        n = min(self._pre, self._ring_len, frame_start - self._emitted_end)
        if n <= 0:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(list(self._ring))[-n:]

    def _make(self, audio: np.ndarray, start: int, speech_start: int, speech_end: int, forced: bool) -> Utterance:
        u = Utterance(
            utterance_index=self._index,
            start_s=start / self._sr,
            end_s=(start + audio.size) / self._sr,
            audio=audio,
            end_of_speech_time=time.perf_counter(),
            forced_split=forced,
            speech_start_s=speech_start / self._sr,
            speech_end_s=speech_end / self._sr,
        )
        self._index += 1
        self._emitted_end = start + audio.size
        return u

    def _finish(self, speech_end: int, forced: bool) -> Utterance | None:
        audio = np.concatenate(self._buf)
        cut = min(speech_end + self._post - self._buf_start, audio.size, self._max)
        speech = speech_end - self._speech_start
        keep = speech > 0 if self._continuation else speech >= self._min_speech
        u = self._make(audio[:cut].copy(), self._buf_start, self._speech_start, speech_end, forced) if keep else None
        # The buffer's tail is the most recent audio: it seeds the next pre-roll.
        self._active = False
        self._buf, self._buf_len = [], 0
        self._silence_start = None
        self._ring.clear()
        self._ring_len = 0
        if self._pre:
            self._ring_append(audio[-self._pre :])
        if self._on_mark is not None:
            self._on_mark(SpeechMark("speech_end", speech_end / self._sr, u.utterance_index if u else None))
        return u

    def _split(self) -> Utterance | None:
        """Cut the open utterance at the length limit; the rest stays open as a contiguous continuation."""
        if self._silence_start is not None and self._silence_start - self._buf_start <= self._max:
            speech_end = self._silence_start
            speech = speech_end - self._speech_start
            if not (speech > 0 if self._continuation else speech >= self._min_speech):
                return self._finish(speech_end, forced=True)  # nothing worth keeping: dropped, closed
            cut = min(speech_end + self._post - self._buf_start, self._max)
        else:
            cut = self._max
            speech_end = self._buf_start + cut
        audio = np.concatenate(self._buf)
        u = self._make(audio[:cut].copy(), self._buf_start, self._speech_start, speech_end, forced=True)
        end = self._buf_start + cut
        rest = audio[cut:].copy()
        # The silence run (if any) goes on in the continuation: it closes it (dropped, as it then holds no
        # speech) after min_silence_ms, or speech resumes and the continuation holds the audio in between.
        self._buf, self._buf_len, self._buf_start = [rest], rest.size, end
        self._speech_start = end
        self._continuation = True
        return u


class FrameBuffer:
    """Cuts a stream of arbitrary-size chunks into fixed frames (per stream)."""

    def __init__(self, frame_samples: int = FRAME_SAMPLES) -> None:
        self.frame_samples = int(frame_samples)
        self._pending = np.zeros(0, dtype=np.float32)

    @property
    def pending_samples(self) -> int:
        """Samples waiting for the next whole frame."""
        return int(self._pending.size)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add samples; returns the whole frames now available, float32 [N, frame_samples]."""
        data = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32).reshape(-1)])
        n = data.size // self.frame_samples
        frames = data[: n * self.frame_samples].reshape(n, self.frame_samples).copy()
        self._pending = data[n * self.frame_samples :].copy()
        return frames

    def flush(self) -> np.ndarray:
        """Return (and forget) the partial frame left over, unpadded; may be empty."""
        tail, self._pending = self._pending, np.zeros(0, dtype=np.float32)
        return tail

    def reset(self) -> None:
        """Drop pending samples."""
        self._pending = np.zeros(0, dtype=np.float32)


def _check_chunk(samples: np.ndarray) -> np.ndarray:
    x = as_mono_float32(samples, "audio chunk")
    if not np.all(np.isfinite(x)):
        raise AudioError("audio chunk contains NaN or infinite samples")
    return x


class StreamFrontEnd:
    """One stream's front end: its frame buffer, VAD state and segmenter.

    The `SileroVad` is shared; everything per stream lives here. A pipeline that
    batches VAD across streams can use the pieces directly:
    `frames = fe.frames.push(chunk)`, score them with `fe.vad_state`, then
    `fe.accept_frames(frames, probs)`.

    Args:
        vad: the shared VAD engine.
        config: segmentation settings.
        on_mark: the segmenter's speech-boundary callback (`Segmenter`).
    """

    def __init__(self, vad: SileroVad, config: SegmenterConfig | None = None,
                 on_mark: Callable[[SpeechMark], None] | None = None) -> None:
        self.vad = vad
        self.vad_state = VadState.initial()
        self.frames = FrameBuffer(FRAME_SAMPLES)
        self.segmenter = Segmenter(config, on_mark)
        self.finished = False

    def accept(self, samples: np.ndarray) -> list[Utterance]:
        """Feed float32 16 kHz mono samples (any count); returns completed utterances.

        Raises:
            AudioError: the chunk is not 1-D float or holds NaN/inf.
            RuntimeError: called after `flush()` without `reset()`.
        """
        x = _check_chunk(samples)
        if self.finished:
            raise RuntimeError("StreamFrontEnd.accept() after flush(): call reset() to start a new stream")
        frames = self.frames.push(x)
        if frames.shape[0] == 0:
            return []
        probs = self.vad.process_stream(frames, self.vad_state)
        return self.accept_frames(frames, probs)

    def accept_frames(self, frames: np.ndarray, probs: np.ndarray) -> list[Utterance]:
        """Push already-scored frames (float32 [N, 512] with probs [N]) to the segmenter."""
        out: list[Utterance] = []
        for frame, prob in zip(frames, np.asarray(probs).reshape(-1)):
            out.extend(self.segmenter.push(frame, float(prob)))
        return out

    def flush(self) -> list[Utterance]:
        """End of input: score the zero-padded partial frame and close the open utterance.

        Idempotent; after it, `accept` raises until `reset()`.
        """
        if self.finished:
            return []
        self.finished = True
        out: list[Utterance] = []
        tail = self.frames.flush()
        if tail.size:
            padded = np.zeros(FRAME_SAMPLES, dtype=np.float32)
            padded[: tail.size] = tail
            prob = float(self.vad.process_stream(padded[None, :], self.vad_state)[0])
            out.extend(self.segmenter.push(tail, prob))
        last = self.segmenter.flush()
        if last is not None:
            out.append(last)
        return out

    def reset(self) -> None:
        """Start a new stream at t = 0 with the same VAD and config."""
        self.vad_state.reset()
        self.frames.reset()
        self.segmenter.reset()
        self.finished = False
