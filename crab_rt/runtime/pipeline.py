"""The streaming scheduler: shared engines, per-stream state, three workers.

Contract
--------
- `Pipeline(bundle, config)` loads the shared engines once: Silero VAD, the
  emotion model on one backend, and faster-whisper. It owns three worker
  threads: **speech** (speech encoder), **asr** (faster-whisper) and **fusion**
  (text encoder + head). Engines hold no stream state.
- `pipeline.create_stream(stream_id, on_event=None, on_speech=None, provisional=None)` returns a
  `Stream` that carries its own VAD state, frame buffer and segmenter.
  `on_speech` receives the segmenter's `SpeechMark`s (speech start / end, for
  barge-in) in the thread that calls `accept`/`flush`, before the utterance a
  "speech_end" closes is submitted. Many streams share one
  pipeline; utterances that are ready together are batched.
- `stream.accept(samples)`: float32 mono 16 kHz samples, any count. VAD and
  segmentation run in the caller's thread (about 0.1 ms per 32 ms frame);
  each finished utterance is submitted at once: the speech encoder starts
  while ASR runs. Raises `AudioError` for bad samples, `RuntimeError` after
  `flush()` or `close()`, and the stream's error (below) once it has one.
- `stream.flush()`: end of input; the utterance in flight is closed and
  processed. `stream.events()` then ends after the stream's last event.
- Events go to `on_event` (called from the fusion thread; keep it short) or,
  without a callback, into the stream's bounded queue read by
  `stream.events()` / `stream.get_event()`. A stream created with
  `provisional=True` (default: `PipelineConfig.provisional`) also gets each
  utterance's "provisional" event, from the voice-only classifier in the
  speech thread, always before that utterance's "final" one.
- Bounded everywhere. Admission: at most `max_in_flight` utterances are being
  processed; beyond that `overflow="block"` makes `accept` wait (files: no
  loss) and `overflow="drop"` drops the new utterance, logs a warning on the
  `crab_rt` logger at once, and counts it in `stream.dropped_utterances`
  (microphones: latency stays bounded). An unread
  event queue drops its oldest event when full (`stream.dropped_events`).
  `pipeline.latencies` (`LatencyStats`) keeps every event's stage timings in
  fixed histograms: memory does not grow with the run.
- Errors. When a worker step fails, every stream with an utterance in that
  batch is failed: its next `accept`, `flush`, `wait`, `get_event` or
  `events` raises (a blocked `wait`/`get_event` wakes up), and so does every
  later call. The error is a `BackendError` naming the stage and the cause
  (chained with `from`), or the worker's own `CrabError`; the failed batch
  produces no events. Other streams and the workers carry on: a failure is
  per batch. An exception raised by `on_event` fails only its own stream and
  is raised as is (by its next `flush`, `wait`, ...). `pipeline.error` /
  `pipeline.check()` give the first worker error too.
- Checked before the model loads: the config (`PipelineConfig.validate`), the
  GPU index against the CUDA devices present (`check_gpu_index`), and
  `segmenter.max_utterance_s` against the bundle's `max_audio_s`: the default
  (12 s) is lowered to it, a larger value that was set is refused (`ConfigError`).
- A stream's state is read-only properties: `in_speech`, `samples_accepted`,
  `emitted`, `dropped_utterances`, `dropped_events`, `flushed`, `error`.
- `pipeline.close()` waits for work in flight, stops the workers; idempotent.
  It ends every stream, also while other threads still feed them: each
  utterance submitted before the close produces its event; one submitted
  after it is refused (that `accept`/`flush` raises `RuntimeError`
  "pipeline closed"); then every stream's `wait()` returns and its
  `events()` ends after the events already delivered. Audio still inside a
  stream's segmenter (not flushed) is discarded. Every later `accept` or
  `flush` on any stream of the closed pipeline raises `RuntimeError`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crab_rt.backends.base import BACKEND_NAMES
from crab_rt.backends.select import check_gpu_index
from crab_rt.bundle import PRECISIONS, Bundle, load_bundle
from crab_rt.checks import is_int
from crab_rt.errors import BackendError, ConfigError, CrabError
from crab_rt.runtime.asr import AsrConfig, Transcriber
from crab_rt.runtime.cores import max_stage_threads, plan_cores
from crab_rt.runtime.emotion_model import EmotionModel, Features
from crab_rt.runtime.events import EmotionEvent
from crab_rt.runtime.segmenter import SegmenterConfig, SpeechMark, StreamFrontEnd, Utterance
from crab_rt.runtime.speech_frontend import IncrementalStream, UtteranceFrames, run_chunks
from crab_rt.runtime.summary import LatencyStats
from crab_rt.runtime.vad import SileroVad

__all__ = ["OVERFLOW_POLICIES", "PipelineConfig", "Pipeline", "Stream"]

OVERFLOW_POLICIES = ("block", "drop")

logger = logging.getLogger(__name__)


def max_threads() -> int:
    """The most CPU threads per session `PipelineConfig.threads` accepts: 4 per core, at least 16."""
    return max_stage_threads(os.cpu_count() or 1)


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
        threads: CPU threads per ONNX Runtime session of the encoders and the head (0 = the core budget's,
            else 1..`max_threads()`).
        cores: the CPUs the core budget (`crab_rt.runtime.cores.plan_cores`) splits between the stages so
            that ASR and the speech encoder, which run at the same time, do not take each other's cores:
            0 = those this process may run on. `threads` and `asr.cpu_threads`, when not 0, override their
            stage's share. The budget used is `Pipeline.cores`.
        ort_spinning: let idle ONNX Runtime threads spin. Off by default: the
            pipeline's sessions and ASR share the cores, and spinning workers
            steal them (it doubled the text encoder and head times on 2 cores).
        max_batch: most utterances per encoder or head call.
        asr_max_batch: most utterances per ASR call; 0 (auto) is `max_batch` when ASR runs on a GPU and
            1 on a CPU. Batched and one-at-a-time transcripts are the same (tests/test_asr_batch.py), but on
            a CPU Whisper's encoder does the same work either way (8 utterances: 1.09x faster in all with
            float32, 0.96x with int8, 2 cores), and every utterance of a batch waits for the whole batch.
        max_in_flight: most utterances being processed at once (admission bound).
        overflow: "block" (accept waits) or "drop" (new utterance dropped, counted).
        event_queue_size: per-stream event queue when no callback is set.
        incremental_speech: run the speech encoder's front end on each stream's audio while the person
            speaks, so that at the end of speech only the tail and the rest of the encoder run (when the
            bundle has split speech graphs within their parity bound: `runtime/speech_frontend.py`). Off
            (`crab-rt listen --no-incremental-speech`): the whole speech encoder runs at the end of speech.
        provisional: streams (unless `create_stream` says otherwise) also get a "provisional" event per
            utterance from the bundle's voice-only classifier, the moment the speech encoder has run, before
            the "final" one; needs a bundle with that classifier. Off: final events only.
        min_confidence: an event whose confidence is below this is marked `abstained` (its label stays);
            0 marks none.
    """

    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    asr: AsrConfig | None = field(default_factory=AsrConfig)
    backend: str = "auto"
    gpu: int | None = None
    precision: str = "fp32"
    threads: int = 0
    cores: int = 0
    ort_spinning: bool = False
    max_batch: int = 8
    asr_max_batch: int = 0
    max_in_flight: int = 16
    overflow: str = "block"
    event_queue_size: int = 256
    incremental_speech: bool = True
    provisional: bool = False
    min_confidence: float = 0.0

    def validate(self) -> PipelineConfig:
        self.segmenter.validate()
        if self.asr is not None:
            self.asr.validate()
        if self.gpu is not None and (not isinstance(self.gpu, int) or self.gpu < 0):
            raise ConfigError(f"gpu = {self.gpu!r} is out of range: must be a CUDA device index >= 0 (None: CPU)")
        if not isinstance(self.threads, int) or not (self.threads == 0 or 1 <= self.threads <= max_threads()):
            raise ConfigError(f"threads = {self.threads!r} is out of range: must be 0 (ONNX Runtime's default) "
                              f"or in [1, {max_threads()}] (4 per CPU core)")
        if not is_int(self.cores) or not 0 <= self.cores <= 1024:
            raise ConfigError(f"cores = {self.cores!r} is out of range: must be 0 (the CPUs this process may run "
                              "on) or in [1, 1024]")
        if not 1 <= self.max_batch <= 64:
            raise ConfigError(f"max_batch must be in [1, 64], got {self.max_batch}")
        if not 0 <= self.asr_max_batch <= 64:
            raise ConfigError(f"asr_max_batch must be in [0, 64] (0: auto), got {self.asr_max_batch}")
        if not 1 <= self.max_in_flight <= 1024:
            raise ConfigError(f"max_in_flight must be in [1, 1024], got {self.max_in_flight}")
        if self.backend not in BACKEND_NAMES:
            raise ConfigError(f"backend must be one of {', '.join(BACKEND_NAMES)}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.overflow not in OVERFLOW_POLICIES:
            raise ConfigError(f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}, got {self.overflow!r}")
        if self.event_queue_size < 1:
            raise ConfigError(f"event_queue_size must be >= 1, got {self.event_queue_size}")
        if (isinstance(self.min_confidence, bool) or not isinstance(self.min_confidence, (int, float))
                or not 0.0 <= self.min_confidence <= 1.0):
            raise ConfigError(f"min_confidence must be a probability in [0, 1], got {self.min_confidence!r}")
        return self


class _Outbox:
    """Where one stream's results go: its pending count, events, and the first error that hit it.

    The stream reads it, the pipeline's workers write it; neither reaches into the other.
    """

    def __init__(self, stream_id: str, on_event: Callable[[EmotionEvent], None] | None, queue_size: int,
                 provisional: bool = False) -> None:
        self.stream_id = stream_id
        self.on_event = on_event
        self.provisional = provisional  # the stream also gets provisional events
        self.events: queue.Queue = queue.Queue(maxsize=queue_size)
        self.cond = threading.Condition()
        self.pending = 0
        self.input_closed = False  # flush() was called
        self.pipeline_closed = False  # Pipeline.close() ended this stream
        self.ended = False  # the end marker is in the event queue
        self.error: BaseException | None = None
        self.emitted = 0  # final events (one per utterance)
        self.dropped_events = 0

    def add(self) -> None:
        """One more utterance submitted."""
        with self.cond:
            self.pending += 1

    def done(self) -> None:
        """One submitted utterance delivered or abandoned."""
        with self.cond:
            self.pending -= 1
            self.cond.notify_all()
        self._end_if_done()

    def close_input(self) -> None:
        with self.cond:
            self.input_closed = True
            self.cond.notify_all()
        self._end_if_done()

    def end_by_close(self) -> None:
        """The pipeline closed: no more work will come; wake waiters and end `events()`."""
        with self.cond:
            self.pipeline_closed = True
            self.input_closed = True
            self.cond.notify_all()
        self._end_if_done()

    def fail(self, error: BaseException) -> None:
        """Record an error for the stream's next call; the first one wins."""
        with self.cond:
            if self.error is None:
                self.error = error
            self.cond.notify_all()
        if self.on_event is None:
            self.put(_STOP)  # wake a reader blocked in get_event(); it then raises

    def deliver(self, event: EmotionEvent) -> None:
        with self.cond:
            if event.stage == "final":
                self.emitted += 1
        if self.on_event is None:
            self.put(event)
            return
        try:
            self.on_event(event)
        except Exception as e:  # noqa: BLE001 - the caller's own callback: raised as is by its stream's next call
            self.fail(e)

    def put(self, item: object) -> None:
        """Queue an item; a full queue drops its oldest."""
        while True:
            try:
                self.events.put_nowait(item)
                return
            except queue.Full:
                try:
                    self.events.get_nowait()
                    with self.cond:
                        self.dropped_events += 1
                except queue.Empty:
                    pass

    def _end_if_done(self) -> None:
        with self.cond:
            end = self.input_closed and self.pending == 0 and not self.ended
            self.ended = self.ended or end
        if end and self.on_event is None:
            self.put(_STOP)


# The stage times every event's latency_ms carries, in ms (the incremental ones are added where measured).
_STAGE_TIMES = ("asr", "speech_encoder", "text_encoder", "head", "queue_wait")
# What a provisional event's latency_ms carries besides end_to_event and speech_classifier: the stages that ran.
_PROVISIONAL_TIMES = ("queue_wait", "speech_encoder", "speech_frontend", "speech_tail")


class _Job:
    """One utterance moving through the workers, with its stage timings."""

    __slots__ = ("outbox", "utt", "submitted", "speech", "text", "flagged", "ms", "parts_left", "ready_at", "lock",
                 "frames")

    def __init__(self, outbox: _Outbox, utt: Utterance, parts: int, frames: UtteranceFrames | None = None) -> None:
        self.outbox, self.utt = outbox, utt
        self.frames = frames  # the front-end frames its stream computed during speech (incremental encoding)
        self.submitted = time.perf_counter()
        self.speech: Features | None = None
        self.text, self.flagged = "", False
        # speech_frontend and speech_tail join these where the stream encodes incrementally (_speech_step)
        self.ms: dict[str, float] = dict.fromkeys(_STAGE_TIMES, 0.0)
        self.parts_left = parts
        self.ready_at = 0.0
        self.lock = threading.Lock()


_STOP = object()


class Stream:
    """One audio stream's state. Create with `Pipeline.create_stream`.

    Args:
        stream_id: the name its events carry.
        front_end: its own VAD state, frame buffer and segmenter.
        outbox: where the pipeline delivers its events and errors.
        submit: the pipeline's admission: queues an utterance, False when the overflow policy dropped it.
    """

    def __init__(self, stream_id: str, front_end: StreamFrontEnd, outbox: _Outbox,
                 submit: Callable[..., bool], incremental: IncrementalStream | None = None) -> None:
        self.stream_id = stream_id
        self._front_end = front_end
        self._incremental = incremental  # follows the open utterance for incremental speech encoding
        self._outbox = outbox
        self._submit = submit
        self._samples_accepted = 0
        self._dropped_utterances = 0

    @property
    def on_event(self) -> Callable[[EmotionEvent], None] | None:
        return self._outbox.on_event

    @property
    def in_speech(self) -> bool:
        """The segmenter is inside an utterance (speech seen, its end not yet decided)."""
        return self._front_end.segmenter.in_speech

    @property
    def samples_accepted(self) -> int:
        """Samples fed to `accept` so far."""
        return self._samples_accepted

    @property
    def flushed(self) -> bool:
        return self._outbox.input_closed

    @property
    def emitted(self) -> int:
        """Events produced (delivered to `on_event` or queued)."""
        return self._outbox.emitted

    @property
    def dropped_utterances(self) -> int:
        """Utterances the `overflow="drop"` policy dropped."""
        return self._dropped_utterances

    @property
    def dropped_events(self) -> int:
        """Events pushed out of the full, unread event queue."""
        return self._outbox.dropped_events

    @property
    def error(self) -> BaseException | None:
        """The error that failed this stream (raised by its next call), or None."""
        return self._outbox.error

    def _raise_if_failed(self) -> None:
        error = self._outbox.error
        if error is not None:
            raise error

    def _raise_if_closed(self) -> None:
        if self._outbox.pipeline_closed:
            raise _closed_error(self._outbox)

    def _submit_all(self, utterances: list[Utterance]) -> None:
        if self._incremental is None:
            states = [None] * len(utterances)
        else:
            states = self._incremental.sync(self._front_end.segmenter, utterances)
        for utt, frames in zip(utterances, states):
            if not self._submit(self._outbox, utt, frames):
                self._dropped_utterances += 1

    def accept(self, samples: np.ndarray) -> int:
        """Feed audio; returns how many utterances this call submitted (dropped ones included)."""
        self._raise_if_failed()
        self._raise_if_closed()
        if self.flushed:
            raise RuntimeError(f"stream {self.stream_id}: accept() after flush()")
        utterances = self._front_end.accept(samples)
        self._samples_accepted += int(np.asarray(samples).size)
        self._submit_all(utterances)
        return len(utterances)

    def flush(self) -> int:
        """End of input: submit the utterance in flight; returns how many were submitted."""
        self._raise_if_failed()
        self._raise_if_closed()
        if self.flushed:
            return 0
        utterances = self._front_end.flush()
        self._submit_all(utterances)
        self._outbox.close_input()
        return len(utterances)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted utterance has produced its event (or was dropped).

        Returns False on timeout. Raises the stream's error as soon as one is recorded.
        """
        outbox = self._outbox
        with outbox.cond:
            done = outbox.cond.wait_for(
                lambda: outbox.pending == 0 or outbox.error is not None or outbox.pipeline_closed, timeout)
            abandoned = outbox.pending if outbox.pipeline_closed else 0
        self._raise_if_failed()
        if abandoned:  # not expected: close() drains every submitted utterance first
            raise RuntimeError(f"stream {self.stream_id}: pipeline closed with {abandoned} utterance(s) unfinished")
        return done

    def get_event(self, timeout: float | None = None) -> EmotionEvent | None:
        """The next event, or None at the end of a flushed stream or on timeout; raises the stream's error."""
        self._raise_if_failed()
        try:
            item = self._outbox.events.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _STOP:
            self._outbox.put(_STOP)  # later calls see the end too
            self._raise_if_failed()
            return None
        return item

    def events(self) -> Iterator[EmotionEvent]:
        """Iterate events until the stream is flushed and its last event was emitted."""
        while True:
            event = self.get_event()
            if event is None:
                return
            yield event


def _make_event(stream_id: str, utt: Utterance, labels: Sequence[str], probs: np.ndarray, text: str, flagged: bool,
                ms: dict[str, float], stage: str = "final", min_confidence: float = 0.0) -> EmotionEvent:
    """The event of one utterance: label and confidence from `probs` over `labels`, the stage times `ms`, and
    end_to_event from the end of speech to now; abstained below `min_confidence`. Shared with the Ray Serve
    engine (crab_rt.serve.ray)."""
    best = int(np.argmax(probs))
    latency = {"end_to_event": (time.perf_counter() - utt.end_of_speech_time) * 1000, **ms}
    return EmotionEvent(
        stream_id=stream_id, utterance_id=utt.utterance_index, start_s=utt.start_s, end_s=utt.end_s,
        text=text, text_flagged=flagged, label=labels[best], confidence=float(probs[best]),
        probabilities={k: float(v) for k, v in zip(labels, probs)}, latency_ms=latency,
        forced_split=utt.forced_split, stage=stage, abstained=float(probs[best]) < min_confidence,
    )


def provisional_events(model: EmotionModel, jobs: Sequence[tuple[str, Utterance, dict[str, float]]],
                       speech: Sequence[Features], min_confidence: float) -> list[EmotionEvent]:
    """The provisional events of utterances whose speech features are ready: the voice-only classifier on
    them, one batch. `jobs`: (stream id, utterance, its stage times so far) per feature. (The Ray Serve engine's
    replica runs the classifier with the speech encoder and makes its events with `_make_event`.)"""
    start = time.perf_counter()
    probs = model.classify_voice(speech)
    ms = (time.perf_counter() - start) * 1000
    return [_make_event(stream_id, utt, model.labels, p, "", False, {**times, "speech_classifier": ms},
                        "provisional", min_confidence)
            for (stream_id, utt, times), p in zip(jobs, probs)]


def _admit(admission: threading.BoundedSemaphore, config: PipelineConfig, outbox: _Outbox, utt: Utterance,
           closed: Callable[[], bool]) -> bool:
    """Take one of the `max_in_flight` slots for `utt` under `config.overflow`: "block" waits for one (and
    raises once `closed()` says the engine closed meanwhile), "drop" returns False at once with a warning.
    Shared with the Ray Serve engine (crab_rt.serve.ray)."""
    if config.overflow == "block":
        while not admission.acquire(timeout=0.1):  # wakes up to see a close()
            if closed():
                raise _closed_error(outbox)
        return True
    if admission.acquire(blocking=False):
        return True
    logger.warning("stream %s: dropped utterance at %.1f-%.1f s (%d in flight, overflow=drop)",
                   outbox.stream_id, utt.start_s, utt.end_s, config.max_in_flight)
    return False


def _closed_error(outbox: _Outbox) -> RuntimeError:
    """What submitting to a closed pipeline raises (made only when it happens, not on every submit)."""
    return RuntimeError(f"stream {outbox.stream_id}: pipeline closed")


def _stage_error(stage: str, error: BaseException) -> CrabError:
    """A worker failure as the `CrabError` the streams raise: one line naming the stage and the cause."""
    if isinstance(error, CrabError):
        return error
    message = " ".join(str(error).split())  # ONNX Runtime messages span lines; the CLI prints one
    wrapped = BackendError(f"{stage} failed: {type(error).__name__}" + (f": {message}" if message else ""))
    wrapped.__cause__ = error  # as `raise wrapped from error` would
    return wrapped


def _fit_to_bundle(config: PipelineConfig, bundle: Bundle) -> PipelineConfig:
    """`config` with `segmenter.max_utterance_s` fitted to the audio the bundle's model takes.

    The default is lowered to the bundle's `max_audio_s` (logged at INFO); a larger value that was set is refused,
    since the model would see only its first `max_audio_s` seconds.
    """
    seg = config.segmenter
    limit = bundle.max_audio_s
    if seg.max_utterance_s <= limit:
        return config
    if seg.max_utterance_s != SegmenterConfig.max_utterance_s:
        raise ConfigError(f"max_utterance_s = {seg.max_utterance_s:g} s is more than the bundle takes: {bundle.root} "
                          f"was exported for at most {limit:g} s of audio (max_audio_s); use at most {limit:g}")
    logger.info("max_utterance_s lowered from %g to the bundle's max_audio_s, %g s", seg.max_utterance_s, limit)
    return dataclasses.replace(config, segmenter=dataclasses.replace(seg, max_utterance_s=limit).validate())


class Pipeline:
    """Shared engines and workers; see the module docstring for the contract.

    Args:
        bundle: model bundle folder (or a loaded `Bundle` or `EmotionModel`).
        config: runtime settings.
        transcriber: an already loaded ASR engine to share (optional; it keeps its threads, as a loaded
            `EmotionModel` keeps its sessions', whatever the core budget says).
    """

    def __init__(self, bundle: str | Path | Bundle | EmotionModel, config: PipelineConfig | None = None,
                 transcriber: Transcriber | None = None) -> None:
        config = (config or PipelineConfig()).validate()
        check_gpu_index(config.gpu)
        if config.asr is not None and config.asr.device != "cpu" and config.asr.device_index != (config.gpu or 0):
            check_gpu_index(config.asr.device_index)
        if not isinstance(bundle, EmotionModel):
            bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.cores = plan_cores(config.cores, asr_threads=config.asr.cpu_threads if config.asr else 0,
                                speech_threads=config.threads, text_threads=config.threads)
        if config.asr is not None:  # faster-whisper's cpu_threads: its CTranslate2 intra-op threads
            asr = dataclasses.replace(config.asr, cpu_threads=self.cores.asr_threads)
            config = dataclasses.replace(config, asr=asr)
        self.config = config = _fit_to_bundle(config, bundle.bundle if isinstance(bundle, EmotionModel) else bundle)
        self.model = bundle if isinstance(bundle, EmotionModel) else EmotionModel.load(
            bundle, config.backend, config.gpu, config.precision, self.cores.graph_threads(), config.ort_spinning,
            incremental_speech=config.incremental_speech)
        if config.provisional:
            self._check_provisional()
        if self.model.choice.backend == "torch" and self.model.choice.device == "cpu":
            import torch  # already imported by the torch backend; its intra-op pool is process-wide

            torch.set_num_threads(self.cores.speech_threads)
        logger.debug("core budget: %s", self.cores.describe())
        self._incremental = self._incremental_on()
        self.transcriber = transcriber or (Transcriber(self.config.asr) if self.config.asr is not None else None)
        self.vad = SileroVad(num_threads=self.cores.vad_threads)
        on_gpu = self.transcriber is not None and self.transcriber.device == "cuda"
        self.asr_batch = config.asr_max_batch or (config.max_batch if on_gpu else 1)  # see PipelineConfig
        self._admission = threading.BoundedSemaphore(self.config.max_in_flight)
        self._speech_q: queue.Queue = queue.Queue()
        self._asr_q: queue.Queue = queue.Queue()
        self._fusion_q: queue.Queue = queue.Queue()
        self._ids = itertools.count()
        self._closed = False
        self._lock = threading.Lock()  # guards _closed, _outboxes, error and the submit/close handover
        self._outboxes: weakref.WeakSet[_Outbox] = weakref.WeakSet()
        self.error: BaseException | None = None  # first worker failure; raised by `check()`
        self.latencies = LatencyStats()  # every final event's stage timings, bounded memory
        self.provisional_latencies = LatencyStats()  # the same for provisional events
        self.started = time.perf_counter()
        self._workers = [
            threading.Thread(target=self._speech_worker, name="crab-speech", daemon=True),
            threading.Thread(target=self._asr_worker, name="crab-asr", daemon=True),
            threading.Thread(target=self._fusion_worker, name="crab-fusion", daemon=True),
        ]
        for w in self._workers:
            w.start()

    def _incremental_on(self) -> bool:
        """Whether streams encode speech incrementally; says so, or why not, in one log line."""
        model = self.model
        if not model.uses_speech:
            return False
        if not self.config.incremental_speech:
            logger.debug("incremental speech encoding off (turned off): the whole speech encoder runs at end of speech")
            return False
        if model.split is None:  # DEBUG, not WARNING: most bundles' encoders are not frame-local (speech_split.py)
            logger.debug("incremental speech encoding off: %s; the whole speech encoder runs at end of speech",
                        model.split_note)
            return False
        g = model.frontend_geometry
        logger.debug("incremental speech encoding on: the speech front end runs every %d ms of speech (%s)",
                    g.chunk_frames * g.stride * 1000 // self.config.segmenter.sample_rate_hz, model.split_note)
        return True

    def _check_provisional(self) -> None:
        if not self.model.has_voice:
            raise ConfigError(f"{self.model.bundle.root}: provisional events need the bundle's voice-only classifier, "
                              "and this bundle has none (exported before crab-rt had one, or trained with "
                              "model.speech_classifier = false); retrain and re-export it, or leave provisional off")

    def describe(self) -> str:
        """What runs where, in one line (the CLI status line): backend and device, ASR model and device.

        The reasons behind each choice are logged at DEBUG (`-v`) and reported by `crab-rt doctor`.
        """
        if self.transcriber is None:
            asr = "no ASR"
        else:
            asr = f"ASR {self.transcriber.config.model} on {self.transcriber.device}"
            if self.transcriber.fallback_reason:
                logger.debug("asr: %s", self.transcriber.fallback_reason)
        logger.debug("%s", self.model.choice.describe())
        return f"{self.model.choice.summary()}; {asr}"

    def create_stream(self, stream_id: str | None = None,
                      on_event: Callable[[EmotionEvent], None] | None = None,
                      on_speech: Callable[[SpeechMark], None] | None = None,
                      provisional: bool | None = None) -> Stream:
        """A new stream with its own VAD state and segmenter (callbacks: see the module docstring).

        `provisional`: whether it also gets provisional events (None: `PipelineConfig.provisional`).

        Raises:
            ConfigError: provisional events asked of a bundle without the voice-only classifier.
        """
        stream_id = stream_id or f"stream-{next(self._ids)}"
        provisional = self.config.provisional if provisional is None else provisional
        if provisional:
            self._check_provisional()
        outbox = _Outbox(stream_id, on_event, self.config.event_queue_size, provisional)
        with self._lock:
            if self._closed:
                raise RuntimeError("create_stream() on a closed pipeline")
            self._outboxes.add(outbox)
        front_end = StreamFrontEnd(self.vad, self.config.segmenter, on_speech)
        incremental = None
        if self._incremental:
            incremental = IncrementalStream(self.model.frontend_geometry, self._visit,
                                            self.config.segmenter.sample_rate_hz)
        return Stream(stream_id, front_end, outbox, self._submit, incremental)

    def queue_depths(self) -> dict[str, int]:
        """Utterances waiting per worker queue, and in flight in all (submitted, not yet delivered)."""
        with self._lock:
            in_flight = sum(outbox.pending for outbox in self._outboxes)
        return {"speech": self._speech_q.qsize(), "asr": self._asr_q.qsize(), "fusion": self._fusion_q.qsize(),
                "in_flight": in_flight}

    # ---- scheduling -----------------------------------------------------------------
    def _visit(self, frames: UtteranceFrames) -> None:
        """Ask the speech worker to run the front end on a stream's ready chunks (incremental encoding)."""
        with self._lock:
            if not self._closed:
                self._speech_q.put(frames)

    def _submit(self, outbox: _Outbox, utt: Utterance, frames: UtteranceFrames | None = None) -> bool:
        """Queue one utterance of a stream; False when the overflow policy dropped it."""
        if self._closed:
            raise _closed_error(outbox)
        if not _admit(self._admission, self.config, outbox, utt, lambda: self._closed):
            return False
        parts = int(self.model.uses_speech) + 1  # speech encoder (if any) and ASR (or its stand-in)
        job = _Job(outbox, utt, parts, frames)
        with self._lock:  # close() puts the workers' stop marker under this lock: a job is queued before it or refused
            if self._closed:
                self._admission.release()
                raise _closed_error(outbox)
            outbox.add()
            if self.model.uses_speech:
                self._speech_q.put(job)
            self._asr_q.put(job)
        return True

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

    def _guarded(self, stage: str, batch: list[_Job], work: Callable[[list[_Job]], None]) -> None:
        """Run a worker step; on error, fail its jobs' streams instead of hanging them."""
        try:
            work(batch)
        except BaseException as e:  # noqa: BLE001 - raised by the next call of every stream in the batch
            error = _stage_error(stage, e)
            logger.debug("%s failed on %d utterance(s)", stage, len(batch), exc_info=e)
            with self._lock:
                if self.error is None:
                    self.error = error
            for job in batch:
                job.outbox.fail(error)  # before _abandon: a stream woken by its last utterance sees the error
                self._abandon(job)

    def _abandon(self, job: _Job) -> None:
        with job.lock:
            if job.parts_left < 0:
                return
            job.parts_left = -1
        self._admission.release()
        job.outbox.done()

    def _speech_worker(self) -> None:
        while (batch := self._take_batch(self._speech_q, self.config.max_batch)) is not None:
            visits = [item for item in batch if isinstance(item, UtteranceFrames)]
            if visits:  # front-end chunks of utterances still being spoken; jobs queued after them come next
                self._frontend_visit(visits)
            jobs = [item for item in batch if not isinstance(item, UtteranceFrames)]
            if jobs:
                self._guarded("speech encoder", jobs, self._speech_step)

    def _frontend_visit(self, visits: list[UtteranceFrames]) -> None:
        for frames in visits:
            with frames.lock:
                frames.queued = False
        run_chunks(self.model.split["speech_frontend"], visits)
        for frames in visits:  # more than one visit's worth was pending: come back after what is queued now
            with frames.lock:
                again = frames.chunk_ready() and not frames.queued
                frames.queued = frames.queued or again
            if again:
                self._visit(frames)

    def _speech_step(self, batch: list[_Job]) -> None:
        start = time.perf_counter()
        for job in batch:
            job.ms["queue_wait"] += (start - job.submitted) * 1000
        if self._incremental:
            features, tail_ms = self.model.encode_speech_split([job.utt.audio for job in batch],
                                                               [job.frames for job in batch])
            for job in batch:
                job.ms["speech_frontend"] = 0.0 if job.frames is None else job.frames.live_ms
                job.ms["speech_tail"] = tail_ms
        else:
            features = self.model.encode_speech([job.utt.audio for job in batch])
        elapsed = (time.perf_counter() - start) * 1000
        for job, f in zip(batch, features):
            job.speech, job.ms["speech_encoder"] = f, elapsed
        wanted = [job for job in batch if job.outbox.provisional]
        if wanted:  # before _part_done: a provisional event always comes before its final one
            ran = [(job.outbox.stream_id, job.utt, {k: job.ms[k] for k in _PROVISIONAL_TIMES if k in job.ms})
                   for job in wanted]
            events = provisional_events(self.model, ran, [job.speech for job in wanted], self.config.min_confidence)
            for job, event in zip(wanted, events):
                self.provisional_latencies.add(event.latency_ms)
                job.outbox.deliver(event)
        for job in batch:
            self._part_done(job)

    def _asr_worker(self) -> None:
        while (batch := self._take_batch(self._asr_q, self.asr_batch)) is not None:
            self._guarded("ASR", batch, self._asr_step)

    def _asr_step(self, batch: list[_Job]) -> None:
        if self.transcriber is not None:
            start = time.perf_counter()
            if not self.model.uses_speech:
                for job in batch:
                    job.ms["queue_wait"] += (start - job.submitted) * 1000
            results = self.transcriber.transcribe_batch([job.utt.audio for job in batch])
            elapsed = (time.perf_counter() - start) * 1000
            for job, result in zip(batch, results, strict=True):
                job.text, job.flagged = result.text, result.flagged
                job.ms["asr"] = elapsed
        for job in batch:
            self._part_done(job)

    def _fusion_worker(self) -> None:
        while (batch := self._take_batch(self._fusion_q, self.config.max_batch)) is not None:
            self._guarded("text encoder + head", batch, self._fusion_step)

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
        event = _make_event(job.outbox.stream_id, job.utt, self.model.labels, probs, job.text, job.flagged, job.ms,
                            min_confidence=self.config.min_confidence)
        self.latencies.add(event.latency_ms)
        with job.lock:
            job.parts_left = -1
        try:
            job.outbox.deliver(event)
        finally:
            self._admission.release()
            job.outbox.done()

    def check(self) -> None:
        """Raise the first error a worker hit, if any (its streams raise it too; kept for compatibility)."""
        if self.error is not None:
            raise self.error

    # ---- lifecycle --------------------------------------------------------------------
    def close(self) -> None:
        """Finish the work in flight, stop the workers and end every stream. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True  # from here on _submit refuses: nothing is queued behind the stop markers
            for q in (self._speech_q, self._asr_q):
                q.put(_STOP)
        self._workers[0].join()
        self._workers[1].join()
        self._fusion_q.put(_STOP)
        self._workers[2].join()
        with self._lock:
            outboxes = list(self._outboxes)
        for outbox in outboxes:  # every submitted job has been delivered or abandoned: pending is 0
            outbox.end_by_close()
        self.model.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
