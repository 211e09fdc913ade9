"""Incremental speech encoding: the speech encoder's CNN front end runs while the person speaks.

A bundle whose speech encoder passed its incremental parity at export holds two
more graphs besides the whole `speech_encoder`: `speech_frontend` (the CNN
feature encoder and feature projection, waveforms [B, T] -> features [B, F, D],
one frame per `stride` samples, each seeing `receptive_field` samples) and
`speech_backend` (the transformer on those features and a frame mask). The
manifest's `incremental_speech` entry records the geometry, the parity against
the whole graph and its bound (`crab_rt.export.speech_split`).

Per stream, `IncrementalStream` follows the segmenter's open utterance and
copies its audio (pre-roll included: the utterance's true first sample) into an
`UtteranceFrames`; the pipeline's speech worker runs the front end on completed
chunks of `chunk_frames` frames (at most `MAX_CHUNKS_PER_VISIT` per visit, so
the work per call is bounded). Chunk k starts at sample `k * chunk_frames *
stride` and overlaps the next by `receptive_field - stride` samples, so its
frames are the whole-utterance frames. At the end of the utterance only the
frames not yet computed (the tail) run the front end, then `speech_backend`
runs on all frames. A false start, a segment the segmenter drops, or an
utterance whose audio does not match what was copied discards the state (the
utterance then runs the front end whole). Models hold no stream state.

Waveform normalisation over the utterance (`normalize_waveform`) is replaced by
running statistics (the audio from the utterance start to the chunk's end);
the tail uses the whole utterance's. That is an approximation; the export
measures it and marks a bundle whose parity misses its bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from crab_rt.audio import SAMPLE_RATE
from crab_rt.features import MIN_SAMPLES

__all__ = ["SPLIT_GRAPHS", "MAX_CHUNKS_PER_VISIT", "FrontendGeometry", "UtteranceFrames", "IncrementalStream",
           "run_chunks", "encode_split", "tail_inputs", "normalize", "split_status",
           "load_split_sessions"]

logger = logging.getLogger(__name__)

SPLIT_GRAPHS = ("speech_frontend", "speech_backend")
MAX_CHUNKS_PER_VISIT = 4  # bounded work per speech-worker visit: 4 chunks of 320 ms at most


def normalize(audio: np.ndarray, total: float, total_sq: float, count: int) -> np.ndarray:
    """`audio` normalised with the mean and variance of `count` samples summing to `total` and `total_sq`.

    With the sums of the audio itself it is `crab_rt.features.pad_waveforms`'s normalisation.
    """
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    return ((audio - np.float32(mean)) / np.float32(np.sqrt(var + 1e-7))).astype(np.float32)


@dataclass(frozen=True)
class FrontendGeometry:
    """How the front end turns samples into frames (from the bundle's manifest).

    Attributes:
        stride: samples between frames (320 for WavLM).
        receptive_field: samples each frame sees (400 for WavLM).
        chunk_frames: frames per chunk run during speech.
        normalize: the model normalises each waveform over the utterance.
        max_samples: longest waveform the model takes (longer audio is cut, as in the whole pass).
    """

    stride: int = 320
    receptive_field: int = 400
    chunk_frames: int = 16
    normalize: bool = False
    max_samples: int = 12 * SAMPLE_RATE

    @classmethod
    def from_manifest(cls, entry: dict, normalize: bool, max_samples: int) -> FrontendGeometry:
        return cls(int(entry["stride_samples"]), int(entry["receptive_field_samples"]), int(entry["chunk_frames"]),
                   bool(normalize), int(max_samples))

    def frames(self, samples: int) -> int:
        """Frames of a waveform of `samples` samples (0 when shorter than the receptive field)."""
        return 0 if samples < self.receptive_field else (samples - self.receptive_field) // self.stride + 1

    def span(self, first: int, count: int) -> tuple[int, int]:
        """The samples [start, end) that frames first .. first + count - 1 see."""
        return first * self.stride, (first + count - 1) * self.stride + self.receptive_field


class UtteranceFrames:
    """One open utterance of one stream: a copy of its audio so far and the front-end frames computed from it.

    The stream's thread appends audio; the speech worker takes chunks and stores their frames. Both hold
    `lock`. Once `closed` (the utterance ended or was discarded) no more chunks are taken.

    Attributes:
        start: the stream sample where the utterance's audio begins (its pre-roll included).
        live_ms: front-end time spent on this utterance during speech.
    """

    def __init__(self, start: int, geometry: FrontendGeometry) -> None:
        self.start = int(start)
        self.geometry = geometry
        self.lock = threading.Lock()
        self._audio = np.empty(max(geometry.max_samples // 4, 4096), dtype=np.float32)
        self.length = 0
        self.done = 0  # frames computed
        self._features: list[np.ndarray] = []
        self.closed = False
        self.failed = False
        self.queued = False  # a visit is waiting in the speech worker's queue
        self.live_ms = 0.0

    def append(self, samples: np.ndarray) -> None:
        """Add the next samples of the utterance (never more than the model takes)."""
        with self.lock:
            room = self.geometry.max_samples - self.length
            x = samples[: max(room, 0)]
            if x.size == 0:
                return
            if self.length + x.size > self._audio.size:
                grown = np.empty(max(2 * self._audio.size, self.length + x.size), dtype=np.float32)
                grown[: self.length] = self._audio[: self.length]
                self._audio = grown
            self._audio[self.length: self.length + x.size] = x
            self.length += x.size

    def chunk_ready(self) -> bool:
        """Whether a whole chunk of new frames can be computed."""
        g = self.geometry
        return not (self.closed or self.failed) and g.frames(self.length) - self.done >= g.chunk_frames

    def take(self, max_chunks: int = MAX_CHUNKS_PER_VISIT) -> tuple[int, np.ndarray] | None:
        """The input of the next front-end run: (first frame, float32 samples), or None when no chunk is ready."""
        g = self.geometry
        with self.lock:
            if not self.chunk_ready():
                return None
            chunks = min((g.frames(self.length) - self.done) // g.chunk_frames, max_chunks)
            start, end = g.span(self.done, chunks * g.chunk_frames)
            values = self._audio[start:end].copy()
            if g.normalize:  # running statistics: the utterance from its start to this chunk's end
                prefix = self._audio[:end].astype(np.float64)
                values = normalize(values, float(prefix.sum()), float(np.dot(prefix, prefix)), end)
            return self.done, values

    def put(self, first: int, features: np.ndarray, ms: float) -> None:
        """Store the frames of a run that started at frame `first`."""
        with self.lock:
            self.live_ms += ms
            if first != self.done:  # not expected: one worker takes and puts in order
                self.failed = True
                return
            self._features.append(features)
            self.done += int(features.shape[0])

    def fail(self) -> None:
        with self.lock:
            self.failed = True

    def close(self) -> None:
        with self.lock:
            self.closed = True

    def frames_for(self, audio: np.ndarray) -> np.ndarray | None:
        """The computed frames that belong to `audio` (the finished utterance's waveform, cut to the model's
        maximum), or None when none can be reused. Closes the state.

        A frame is kept when its samples lie inside `audio` and equal the samples it was computed from.
        """
        g = self.geometry
        with self.lock:
            self.closed = True
            if self.failed or not self._features:
                return None
            keep = min(self.done, g.frames(audio.size))
            if keep <= 0:
                return None
            _, end = g.span(0, keep)
            if end > self.length or not np.array_equal(self._audio[:end], audio[:end]):
                logger.debug("incremental speech: the utterance's audio differs from the stream's copy; whole pass")
                return None
            return np.concatenate(self._features, axis=0)[:keep]


def tail_inputs(audio: np.ndarray, kept: int, geometry: FrontendGeometry) -> tuple[np.ndarray, int]:
    """The front-end input for the frames of `audio` after the first `kept`, and how many frames that is.

    `audio` is the utterance cut to the model's maximum. The samples are prepared as the whole pass prepares
    them (`pad_waveforms`): normalised over the whole utterance when the model wants it, zero-padded to the
    receptive field when shorter.
    """
    g = geometry
    if g.normalize and audio.size:
        a = audio.astype(np.float64)
        audio = normalize(audio, float(a.sum()), float(np.dot(a, a)), a.size)
    if audio.size < MIN_SAMPLES:
        audio = np.pad(audio, (0, MIN_SAMPLES - audio.size))
    total = g.frames(audio.size)
    count = total - kept
    if count <= 0:
        return np.zeros(0, dtype=np.float32), 0
    start, end = g.span(kept, count)
    return np.ascontiguousarray(audio[start:end], dtype=np.float32), count


def encode_split(frontend, backend, geometry: FrontendGeometry, audios: Sequence[np.ndarray],
                 states: Sequence[UtteranceFrames | None]) -> tuple[list[np.ndarray], float]:
    """The speech encoder on a batch through the split graphs: each state's frames, the front end on the rest
    (the tail), then the backend on all frames (padded together, with a frame mask).

    Args:
        frontend, backend: the `speech_frontend` and `speech_backend` sessions.
        geometry: the front end's geometry.
        audios: the utterances' 16 kHz waveforms.
        states: per utterance, its stream's `UtteranceFrames`, or None (its front end then runs whole).

    Returns:
        per utterance its hidden states [F, D] (valid frames only, float32), and the tail's front-end time (ms).
    """
    frames: list[np.ndarray | None] = []
    tails: list[tuple[int, np.ndarray, int]] = []
    for i, (audio, state) in enumerate(zip(audios, states, strict=True)):
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)[: geometry.max_samples]
        kept = None if state is None else state.frames_for(audio)
        frames.append(kept)
        values, count = tail_inputs(audio, 0 if kept is None else kept.shape[0], geometry)
        if count:
            tails.append((i, values, count))
    start = time.perf_counter()
    if tails:  # right-padded together: a frame sees only its own samples, so padding only adds frames, cut here
        batch = np.zeros((len(tails), max(v.size for _, v, _ in tails)), dtype=np.float32)
        for row, (_, v, _) in enumerate(tails):
            batch[row, : v.size] = v
        out = frontend.run({"input_values": batch})["features"]
        for row, (i, _, count) in enumerate(tails):
            new = out[row, :count].astype(np.float32, copy=False)
            frames[i] = new if frames[i] is None else np.concatenate([frames[i], new], axis=0)
    tail_ms = (time.perf_counter() - start) * 1000
    lengths = [f.shape[0] for f in frames]
    features = np.zeros((len(frames), max(lengths), frames[0].shape[1]), dtype=np.float32)
    mask = np.zeros((len(frames), max(lengths)), dtype=np.int64)
    for i, f in enumerate(frames):
        features[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = 1
    hidden = backend.run({"features": features, "frame_mask": mask})["hidden_states"]
    return [hidden[i, :n].astype(np.float32, copy=False) for i, n in enumerate(lengths)], tail_ms


def run_chunks(frontend, states: Sequence[UtteranceFrames], max_chunks: int = MAX_CHUNKS_PER_VISIT) -> float:
    """One speech-worker visit: run the front end on the ready chunks of `states`; returns the time (ms).

    Runs of equal length (every stream's single chunk, usually) go through the graph as one batch. A state
    whose run fails is marked failed (its utterance then runs the front end whole) and the error is logged.
    """
    taken = [(s, t) for s in states if (t := s.take(max_chunks)) is not None]
    start_all = time.perf_counter()
    by_length: dict[int, list[tuple[UtteranceFrames, int, np.ndarray]]] = {}
    for state, (first, values) in taken:
        by_length.setdefault(values.size, []).append((state, first, values))
    for group in by_length.values():
        start = time.perf_counter()
        try:
            out = frontend.run({"input_values": np.stack([v for _, _, v in group])})["features"]
        except Exception as e:  # noqa: BLE001 - the utterances fall back to the whole pass; reported once here
            logger.warning("incremental speech: the front end failed on %d chunk(s) (%s); those utterances run "
                           "the whole speech encoder", len(group), " ".join(str(e).split())[:200])
            for state, _, _ in group:
                state.fail()
            continue
        ms = (time.perf_counter() - start) * 1000 / len(group)
        for i, (state, first, _) in enumerate(group):
            state.put(first, np.ascontiguousarray(out[i], dtype=np.float32), ms)
    return (time.perf_counter() - start_all) * 1000


class IncrementalStream:
    """One stream's tracker: follows its segmenter's open utterance and hands each finished utterance its frames.

    Called in the stream's own thread after every `accept`/`flush` of its front end (`sync`).

    Args:
        geometry: the front end's geometry.
        visit: asks the speech worker to run the ready chunks of an `UtteranceFrames` (called at most once
            while a visit is pending).
        sample_rate: the stream's rate.
    """

    def __init__(self, geometry: FrontendGeometry, visit: Callable[[UtteranceFrames], None],
                 sample_rate: int = SAMPLE_RATE) -> None:
        self.geometry = geometry
        self._visit = visit
        self._sr = sample_rate
        self._open: UtteranceFrames | None = None

    def sync(self, segmenter, finished: Sequence) -> list[UtteranceFrames | None]:
        """Match `finished` (the utterances the last call completed) with their states, then follow the
        segmenter's open utterance. Returns one state (or None: whole pass) per finished utterance."""
        out: list[UtteranceFrames | None] = []
        for utt in finished:
            start = int(round(utt.start_s * self._sr))
            state = self._open
            if state is not None and state.start == start:
                out.append(state)
                self._open = None
            else:
                out.append(None)
        open_start = segmenter.open_audio_start
        state = self._open
        if state is not None and state.start != open_start:
            state.close()  # false start, dropped segment, or the region moved on: its frames are not needed
            self._open = state = None
        if open_start is None:
            return out
        if state is None:
            self._open = state = UtteranceFrames(open_start, self.geometry)
        state.append(segmenter.open_audio(state.length))
        with state.lock:
            wanted = state.chunk_ready() and not state.queued
            state.queued = state.queued or wanted
        if wanted:
            self._visit(state)
        return out

    def reset(self) -> None:
        """Forget the open utterance (the stream restarts or closes)."""
        if self._open is not None:
            self._open.close()
        self._open = None


def split_status(bundle) -> tuple[bool, str]:
    """Whether `bundle` may encode speech incrementally, and a phrase saying why (not)."""
    entry = bundle.incremental_speech
    if not entry:
        return False, "the bundle has no split speech graphs (exported before incremental encoding)"
    parity, bound = entry.get("parity") or {}, entry.get("bound") or {}
    if not parity and not entry.get("graphs"):
        why = "; ".join(entry.get("locality") or ()) or "no split graphs"
        return False, f"{bundle.root}: its speech encoder is not split ({why})"
    if not entry.get("within_bound"):
        why = "; ".join(entry.get("locality") or ())
        return False, (f"{bundle.root}: its incremental parity (encoder output "
                       f"{parity.get('encoder', float('nan')):.2g}, probabilities "
                       f"{parity.get('probabilities', float('nan')):.2g}) misses its bound "
                       f"({bound.get('encoder')}, {bound.get('probabilities')})" + (f": {why}" if why else ""))
    if not all(bundle.has_graph(name) for name in SPLIT_GRAPHS):
        return False, "the bundle lists no split speech graphs"
    return True, (f"incremental parity encoder output {parity.get('encoder', 0.0):.2g}, probabilities "
                  f"{parity.get('probabilities', 0.0):.2g} "
                  f"(bound {bound.get('encoder')}, {bound.get('probabilities')})")


def load_split_sessions(bundle, choice, sessions: dict, gpu: int | None, threads: int | Mapping[str, int],
                        spinning: bool) -> tuple[dict | None, str]:
    """The split speech graphs on the backend that runs `sessions`, or (None, why not).

    ONNX Runtime loads the bundle's `speech_frontend` and `speech_backend` graphs with the same provider and
    threads; torch runs the same two parts of its `SpeechEncoder`; TensorRT has no split engines.
    """
    ok, why = split_status(bundle)
    if not ok:
        return None, why
    precision = getattr(sessions.get("speech_encoder"), "precision", None) or choice.precision
    if precision != "fp32":  # their parity was measured against the fp32 whole graph
        return None, f"the split speech graphs are fp32 only (the speech encoder runs {precision})"
    if choice.backend == "onnxruntime":
        from crab_rt.backends.onnxruntime import OrtSession
        from crab_rt.runtime.cores import threads_for

        provider = "cpu" if choice.device == "cpu" else "cuda"
        split = {name: OrtSession(bundle.graph_path(name), name, provider=provider, gpu=gpu or 0,
                                  expected_io=bundle.graph_io(name), threads=threads_for(threads, name),
                                  spinning=spinning)
                 for name in SPLIT_GRAPHS}
        return split, why
    if choice.backend == "torch":
        from crab_rt.backends.torch_split import torch_split_sessions

        split = torch_split_sessions(sessions.get("speech_encoder"))
        return (split, why) if split is not None else (None, "the torch speech encoder is compiled or absent")
    return None, f"the {choice.backend} backend has no split speech engines"
