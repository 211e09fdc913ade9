"""The streaming scheduler: shared engines, per-stream state, three workers.

Contract
--------
- `Pipeline(bundle, config)` loads the shared engines once: Silero VAD, the
  emotion model on one backend, and faster-whisper. It owns three worker
  threads: **speech** (speech encoder), **asr** (faster-whisper) and **fusion**
  (text encoder + head). Engines hold no stream state.
- `pipeline.create_stream(stream_id, on_event=None)` returns a `Stream` that
  carries its own VAD state, frame buffer and segmenter. Many streams share one
  pipeline; utterances that are ready together are batched.
- `stream.accept(samples)`: float32 mono 16 kHz samples, any count. VAD and
  segmentation run in the caller's thread (about 0.1 ms per 32 ms frame);
  each finished utterance is submitted at once: the speech encoder starts
  while ASR runs. Raises `AudioError` for bad samples, `RuntimeError` after
  `flush()` or `close()`.
- `stream.flush()`: end of input; the utterance in flight is closed and
  processed. `stream.events()` then ends after the stream's last event.
- Events go to `on_event` (called from the fusion thread; keep it short) or,
  without a callback, into the stream's bounded queue read by
  `stream.events()` / `stream.get_event()`.
- Bounded everywhere. Admission: at most `max_in_flight` utterances are being
  processed; beyond that `overflow="block"` makes `accept` wait (files: no
  loss) and `overflow="drop"` drops the new utterance and counts it in
  `stream.dropped_utterances` (live audio: latency stays bounded). An unread
  event queue drops its oldest event when full (`stream.dropped_events`).
- `pipeline.close()` waits for work in flight, stops the workers; idempotent.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crab_rt.errors import ConfigError
from crab_rt.runtime.asr import AsrConfig, Transcriber
from crab_rt.runtime.emotion_model import EmotionModel, Features
from crab_rt.runtime.events import EmotionEvent
from crab_rt.runtime.segmenter import SegmenterConfig, StreamFrontEnd, Utterance
from crab_rt.runtime.vad import SileroVad

__all__ = ["PipelineConfig", "Pipeline", "Stream"]


@dataclass(frozen=True)
class PipelineConfig:
    """Runtime settings.

    Attributes:
        segmenter: VAD thresholds, hangover, pre-roll, maximum length.
        asr: faster-whisper settings; None runs without ASR (the text encoder then sees
            empty text, as `crab-rt listen --no-asr` documents).
        backend: "auto", "tensorrt", "onnxruntime" or "torch".
        gpu: CUDA device index for the emotion model (None: CPU, or the first GPU for auto).
        precision: "fp32" or "fp16".
        threads: CPU threads per ONNX Runtime session (0 = default).
        ort_spinning: let idle ONNX Runtime threads spin. Off by default: the
            pipeline's sessions and ASR share the cores, and spinning workers
            steal them (it doubled the text encoder and head times on 2 cores).
        max_batch: most utterances per encoder or head call.
        max_in_flight: most utterances being processed at once (admission bound).
        overflow: "block" (accept waits) or "drop" (new utterance dropped, counted).
        event_queue_size: per-stream event queue when no callback is set.
    """

    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    asr: AsrConfig | None = field(default_factory=AsrConfig)
    backend: str = "auto"
    gpu: int | None = None
    precision: str = "fp32"
    threads: int = 0
    ort_spinning: bool = False
    max_batch: int = 8
    max_in_flight: int = 16
    overflow: str = "block"
    event_queue_size: int = 256

    def validate(self) -> PipelineConfig:
        self.segmenter.validate()
        if self.asr is not None:
            self.asr.validate()
        if not 1 <= self.max_batch <= 64:
            raise ConfigError(f"max_batch must be in [1, 64], got {self.max_batch}")
        if not 1 <= self.max_in_flight <= 1024:
            raise ConfigError(f"max_in_flight must be in [1, 1024], got {self.max_in_flight}")
        if self.overflow not in ("block", "drop"):
            raise ConfigError(f"overflow must be 'block' or 'drop', got {self.overflow!r}")
        if self.event_queue_size < 1:
            raise ConfigError(f"event_queue_size must be >= 1, got {self.event_queue_size}")
        return self


class _Job:
    """One utterance moving through the workers, with its stage timings."""

    __slots__ = ("stream", "utt", "submitted", "speech", "text", "flagged", "ms", "parts_left", "ready_at", "lock")

    def __init__(self, stream: Stream, utt: Utterance, parts: int) -> None:
        self.stream, self.utt = stream, utt
        self.submitted = time.perf_counter()
        self.speech: Features | None = None
        self.text, self.flagged = "", False
        self.ms: dict[str, float] = {"asr": 0.0, "speech_encoder": 0.0, "text_encoder": 0.0, "head": 0.0,
                                     "queue_wait": 0.0}
        self.parts_left = parts
        self.ready_at = 0.0
        self.lock = threading.Lock()


_STOP = object()


class Stream:
    """One audio stream's state. Create with `Pipeline.create_stream`."""

    def __init__(self, pipeline: Pipeline, stream_id: str, on_event: Callable[[EmotionEvent], None] | None) -> None:
        self.pipeline = pipeline
        self.stream_id = stream_id
        self.on_event = on_event
        self.front_end = StreamFrontEnd(pipeline.vad, pipeline.config.segmenter)
        self._events: queue.Queue = queue.Queue(maxsize=pipeline.config.event_queue_size)
        self._pending = 0
        self._cond = threading.Condition()
        self.flushed = False
        self.samples_accepted = 0
        self.dropped_utterances = 0
        self.dropped_events = 0
        self.emitted = 0

    def accept(self, samples: np.ndarray) -> int:
        """Feed audio; returns how many utterances this call submitted."""
        if self.flushed:
            raise RuntimeError(f"stream {self.stream_id}: accept() after flush()")
        utterances = self.front_end.accept(samples)
        self.samples_accepted += int(np.asarray(samples).size)
        for utt in utterances:
            self.pipeline._submit(self, utt)
        return len(utterances)

    def flush(self) -> int:
        """End of input: submit the utterance in flight; returns how many were submitted."""
        if self.flushed:
            return 0
        utterances = self.front_end.flush()
        for utt in utterances:
            self.pipeline._submit(self, utt)
        with self._cond:
            self.flushed = True
            self._cond.notify_all()
        self._maybe_finish()
        return len(utterances)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted utterance has produced its event (or was dropped)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def get_event(self, timeout: float | None = None) -> EmotionEvent | None:
        """The next event, or None at the end of a flushed stream or on timeout."""
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _STOP:
            self._events.put(_STOP)  # later calls see the end too
            return None
        return item

    def events(self) -> Iterator[EmotionEvent]:
        """Iterate events until the stream is flushed and its last event was emitted."""
        while True:
            event = self.get_event()
            if event is None:
                return
            yield event

    # called by the pipeline ---------------------------------------------------------
    def _add_pending(self, n: int) -> None:
        with self._cond:
            self._pending += n
            self._cond.notify_all()
        if n < 0:
            self._maybe_finish()

    def _maybe_finish(self) -> None:
        with self._cond:
            done = self.flushed and self._pending == 0
        if done and self.on_event is None:
            self._put(_STOP)

    def _put(self, item) -> None:
        while True:
            try:
                self._events.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._events.get_nowait()
                    self.dropped_events += 1
                except queue.Empty:
                    pass

    def _emit(self, event: EmotionEvent) -> None:
        self.emitted += 1
        if self.on_event is not None:
            self.on_event(event)
        else:
            self._put(event)


class Pipeline:
    """Shared engines and workers; see the module docstring for the contract.

    Args:
        bundle: model bundle folder (or a loaded `EmotionModel`).
        config: runtime settings.
        transcriber: an already loaded ASR engine to share (optional).
    """

    def __init__(self, bundle: str | Path | EmotionModel, config: PipelineConfig | None = None,
                 transcriber: Transcriber | None = None) -> None:
        self.config = (config or PipelineConfig()).validate()
        self.model = bundle if isinstance(bundle, EmotionModel) else EmotionModel.load(
            bundle, self.config.backend, self.config.gpu, self.config.precision, self.config.threads,
            self.config.ort_spinning)
        self.transcriber = transcriber or (Transcriber(self.config.asr) if self.config.asr is not None else None)
        self.vad = SileroVad(num_threads=1)
        self._admission = threading.BoundedSemaphore(self.config.max_in_flight)
        self._speech_q: queue.Queue = queue.Queue()
        self._asr_q: queue.Queue = queue.Queue()
        self._fusion_q: queue.Queue = queue.Queue()
        self._ids = itertools.count()
        self._closed = False
        self._lock = threading.Lock()
        self.error: BaseException | None = None  # first worker failure; raised by `check()`
        self.latencies: list[dict[str, float]] = []
        self.started = time.perf_counter()
        self._workers = [
            threading.Thread(target=self._speech_worker, name="crab-speech", daemon=True),
            threading.Thread(target=self._asr_worker, name="crab-asr", daemon=True),
            threading.Thread(target=self._fusion_worker, name="crab-fusion", daemon=True),
        ]
        for w in self._workers:
            w.start()

    def create_stream(self, stream_id: str | None = None,
                      on_event: Callable[[EmotionEvent], None] | None = None) -> Stream:
        """A new stream with its own VAD state and segmenter."""
        if self._closed:
            raise RuntimeError("create_stream() on a closed pipeline")
        return Stream(self, stream_id or f"stream-{next(self._ids)}", on_event)

    # ---- scheduling -----------------------------------------------------------------
    def _submit(self, stream: Stream, utt: Utterance) -> None:
        if self._closed:
            raise RuntimeError("pipeline is closed")
        if self.config.overflow == "block":
            self._admission.acquire()
        elif not self._admission.acquire(blocking=False):
            stream.dropped_utterances += 1
            return
        stream._add_pending(1)
        parts = int(self.model.uses_speech) + 1  # speech encoder (if any) and ASR (or its stand-in)
        job = _Job(stream, utt, parts)
        if self.model.uses_speech:
            self._speech_q.put(job)
        self._asr_q.put(job)

    def _part_done(self, job: _Job) -> None:
        with job.lock:
            if job.parts_left < 0:  # abandoned after an error in the other branch
                return
            job.parts_left -= 1
            ready = job.parts_left == 0
        if ready:
            job.ready_at = time.perf_counter()
            self._fusion_q.put(job)

    @staticmethod
    def _take_batch(q: queue.Queue, limit: int) -> list | None:
        first = q.get()
        if first is _STOP:
            return None
        batch = [first]
        while len(batch) < limit:
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                q.put(_STOP)
                break
            batch.append(item)
        return batch

    def _guarded(self, batch: list[_Job], work: Callable[[list[_Job]], None]) -> None:
        """Run a worker step; on error, fail its jobs instead of hanging their streams."""
        try:
            work(batch)
        except BaseException as e:  # noqa: BLE001 - reported to the caller through the pipeline
            with self._lock:
                if self.error is None:
                    self.error = e
            for job in batch:
                self._abandon(job)

    def _abandon(self, job: _Job) -> None:
        with job.lock:
            if job.parts_left < 0:
                return
            job.parts_left = -1
        self._admission.release()
        job.stream._add_pending(-1)

    def _speech_worker(self) -> None:
        while (batch := self._take_batch(self._speech_q, self.config.max_batch)) is not None:
            self._guarded(batch, self._speech_step)

    def _speech_step(self, batch: list[_Job]) -> None:
        start = time.perf_counter()
        for job in batch:
            job.ms["queue_wait"] += (start - job.submitted) * 1000
        features = self.model.encode_speech([job.utt.audio for job in batch])
        elapsed = (time.perf_counter() - start) * 1000
        for job, f in zip(batch, features):
            job.speech, job.ms["speech_encoder"] = f, elapsed
            self._part_done(job)

    def _asr_worker(self) -> None:
        while (batch := self._take_batch(self._asr_q, 1)) is not None:
            self._guarded(batch, self._asr_step)

    def _asr_step(self, batch: list[_Job]) -> None:
        job = batch[0]
        if self.transcriber is not None:
            start = time.perf_counter()
            if not self.model.uses_speech:
                job.ms["queue_wait"] += (start - job.submitted) * 1000
            result = self.transcriber.transcribe(job.utt.audio)
            job.text, job.flagged = result.text, result.flagged
            job.ms["asr"] = (time.perf_counter() - start) * 1000
        self._part_done(job)

    def _fusion_worker(self) -> None:
        while (batch := self._take_batch(self._fusion_q, self.config.max_batch)) is not None:
            self._guarded(batch, self._fusion_step)

    def _fusion_step(self, batch: list[_Job]) -> None:
        start = time.perf_counter()
        for job in batch:
            job.ms["queue_wait"] += (start - job.ready_at) * 1000
        text = None
        if self.model.uses_text:
            text = self.model.encode_text([job.text for job in batch])
        mid = time.perf_counter()
        probs = self.model.classify([job.speech for job in batch] if self.model.uses_speech else None, text)
        end = time.perf_counter()
        for job, p in zip(batch, probs):
            job.ms["text_encoder"] = (mid - start) * 1000
            job.ms["head"] = (end - mid) * 1000
            self._finish(job, p)

    def _finish(self, job: _Job, probs: np.ndarray) -> None:
        labels = self.model.labels
        best = int(np.argmax(probs))
        latency = {"end_to_event": (time.perf_counter() - job.utt.end_of_speech_time) * 1000, **job.ms}
        event = EmotionEvent(
            stream_id=job.stream.stream_id, utterance_id=job.utt.utterance_index,
            start_s=job.utt.start_s, end_s=job.utt.end_s, text=job.text, text_flagged=job.flagged,
            label=labels[best], confidence=float(probs[best]),
            probabilities={k: float(v) for k, v in zip(labels, probs)},
            latency_ms=latency, forced_split=job.utt.forced_split,
        )
        with self._lock:
            self.latencies.append(latency)
        with job.lock:
            job.parts_left = -1
        try:
            job.stream._emit(event)
        finally:
            self._admission.release()
            job.stream._add_pending(-1)

    def check(self) -> None:
        """Re-raise the first error a worker hit (its utterances produced no event)."""
        if self.error is not None:
            raise self.error

    # ---- lifecycle --------------------------------------------------------------------
    def close(self) -> None:
        """Finish the work in flight and stop the workers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for q in (self._speech_q, self._asr_q):
            q.put(_STOP)
        self._workers[0].join()
        self._workers[1].join()
        self._fusion_q.put(_STOP)
        self._workers[2].join()
        self.model.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
