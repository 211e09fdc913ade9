"""`RayEngine`: what a `crab-rt serve` session uses of a `Pipeline`, with the model and ASR stages in Ray Serve
deployments (calls with retries on replica death and a timeout; events delivered in utterance order)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
import weakref
from types import SimpleNamespace
from typing import Any

import numpy as np

from crab_rt.errors import BackendError
from crab_rt.runtime.pipeline import (
    _STAGE_TIMES,
    PipelineConfig,
    Stream,
    _admit,
    _closed_error,
    _make_event,
    _Outbox,
    _stage_error,
)
from crab_rt.runtime.segmenter import StreamFrontEnd, Utterance
from crab_rt.serve.ray.settings import ASR, MODEL

log = logging.getLogger(__name__)

_RETRYABLE = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
              "DeploymentUnavailableError")


class _Described:
    """The `choice` of a Ray engine's model: what runs where (`describe`, /healthz), in short (`summary`, /admit)."""

    def __init__(self, text: str, short: str) -> None:
        self._text, self._short = text, short

    def describe(self) -> str:
        return self._text

    def summary(self) -> str:
        return self._short


class _Order:
    """One stream's completed utterances, delivered in submission order."""

    def __init__(self) -> None:
        self.next_seq = itertools.count()  # taken by the submitting thread
        self.deliver_seq = 0  # read and written on the event loop only
        self.ready: dict[int, tuple] = {}


class RayEngine:
    """What a `_Session` uses of a `Pipeline`, with the model and ASR stages in Ray Serve deployments.

    Streams are real `Stream`s (front end in the ingress); `_submit` hands each utterance to the event loop,
    which calls the deployments (speech encoder and ASR at once, then text encoder + head) and delivers the
    events in order. Admission (`max_in_flight`, `overflow`) is the pipeline's, per ingress replica.
    """

    def __init__(self, model_handle, asr_handle, config: PipelineConfig, info: dict[str, Any],
                 asr_info: dict[str, Any] | None, retries: int, timeout_s: float, registry=None) -> None:
        from crab_rt.runtime.vad import SileroVad

        self.config = config
        self._model_handle, self._asr_handle = model_handle, asr_handle
        described = f"Ray Serve: {MODEL} ({info['backend']})" + (
            f" + {ASR} ({asr_info['device']})" if asr_info is not None else "")
        self.model = SimpleNamespace(labels=list(info["labels"]), uses_speech=bool(info["uses_speech"]),
                                     uses_text=bool(info["uses_text"]), has_voice=bool(info.get("has_voice")),
                                     choice=_Described(described, f"Ray Serve: {MODEL}" + (
                                         f" + {ASR}" if asr_info is not None else "")))
        self.vad = SileroVad(num_threads=1)
        self.retries, self.timeout_s = retries, timeout_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self._admission = threading.BoundedSemaphore(config.max_in_flight)
        self._closed = False
        self._outboxes: weakref.WeakKeyDictionary[_Outbox, _Order] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.calls = {"speech": 0, "asr": 0, "fusion": 0}  # calls waiting for a replica's answer
        self.retried = self.failed = None
        if registry is not None:
            from prometheus_client import Counter

            self.retried = Counter("crab_rt_ray_call_retries", "Model/ASR calls sent again after their replica "
                                   "died", ["deployment"], registry=registry)
            self.failed = Counter("crab_rt_ray_call_failures", "Model/ASR calls that failed their stream",
                                  ["deployment"], registry=registry)
            for name in (MODEL, ASR):
                self.retried.labels(name)
                self.failed.labels(name)

    def create_stream(self, stream_id: str, on_event=None, on_speech=None, provisional: bool = False) -> Stream:
        """A stream; `provisional`: it also gets provisional events (the server checked `model.has_voice`)."""
        outbox = _Outbox(stream_id, on_event, self.config.event_queue_size, provisional)
        with self._lock:
            if self._closed:
                raise RuntimeError("create_stream() on a closed engine")
            self._outboxes[outbox] = _Order()
        return Stream(stream_id, StreamFrontEnd(self.vad, self.config.segmenter, on_speech), outbox, self._submit)

    def queue_depths(self) -> dict[str, int]:
        with self._lock:
            in_flight = sum(outbox.pending for outbox in list(self._outboxes))
        return {**self.calls, "in_flight": in_flight}

    def close(self) -> None:
        self._closed = True

    # ---- scheduling (the submitting thread) ----------------------------------------------------------------------
    def _submit(self, outbox: _Outbox, utt: Utterance, frames=None) -> bool:
        # `frames`: incremental speech encoding's state, which streams without it (these) never pass
        if self._closed or self.loop is None:
            raise _closed_error(outbox)
        if not _admit(self._admission, self.config, outbox, utt, lambda: self._closed):
            return False
        seq = next(self._outboxes[outbox].next_seq)
        outbox.add()
        try:
            asyncio.run_coroutine_threadsafe(self._process(outbox, seq, utt), self.loop)
        except RuntimeError:  # the loop is closed: the replica is going away
            self._admission.release()
            outbox.done()
            raise _closed_error(outbox) from None
        return True

    # ---- processing (the event loop) -----------------------------------------------------------------------------
    async def _process(self, outbox: _Outbox, seq: int, utt: Utterance) -> None:
        try:
            result: tuple = ("ok", await self._run(utt, outbox))
        except Exception as e:  # noqa: BLE001 - becomes the stream's error, in utterance order
            result = ("error", e)
        self._complete(outbox, seq, utt, result)

    def _complete(self, outbox: _Outbox, seq: int, utt: Utterance, result: tuple) -> None:
        order = self._outboxes.get(outbox)
        if order is None:  # not expected: the running job holds its outbox, which holds the order
            self._admission.release()
            outbox.done()
            return
        order.ready[seq] = (utt, result)
        while order.deliver_seq in order.ready:
            utt, (kind, value) = order.ready.pop(order.deliver_seq)
            order.deliver_seq += 1
            try:
                if kind == "ok":
                    probs, text, flagged, ms = value
                    outbox.deliver(_make_event(outbox.stream_id, utt, self.model.labels, probs, text, flagged, ms,
                                               min_confidence=self.config.min_confidence))
                else:
                    log.debug("stream %s: utterance %d failed", outbox.stream_id, utt.utterance_index, exc_info=value)
                    outbox.fail(value)
            finally:
                self._admission.release()
                outbox.done()

    async def _run(self, utt: Utterance, outbox: _Outbox) -> tuple[np.ndarray, str, bool, dict[str, float]]:
        ms = dict.fromkeys(_STAGE_TIMES, 0.0)
        model, asr = self._model_handle, self._asr_handle
        speech = (asyncio.ensure_future(self._call("speech", "speech encoder", model.speech, utt.audio))
                  if self.model.uses_speech else None)
        heard = (asyncio.ensure_future(self._call("asr", "ASR", asr.transcribe, utt.audio))
                 if asr is not None else None)
        wait = 0.0
        try:
            hidden = None
            if speech is not None:
                (hidden, ms["speech_encoder"], voice, voice_ms), rtt = await speech
                wait += rtt - ms["speech_encoder"] - voice_ms
                if outbox.provisional and voice is not None:  # before the final event, which needs ASR too
                    times = {"queue_wait": max(0.0, wait), "speech_encoder": ms["speech_encoder"],
                             "speech_classifier": voice_ms}
                    outbox.deliver(_make_event(outbox.stream_id, utt, self.model.labels, np.asarray(voice), "", False,
                                               times, "provisional", self.config.min_confidence))
            text, flagged = "", False
            if heard is not None:
                (text, flagged, ms["asr"]), rtt = await heard
                if speech is None:
                    wait += rtt - ms["asr"]
        except BaseException:
            for task in (speech, heard):
                if task is not None and not task.done():
                    task.cancel()
            raise
        (probs, ms["text_encoder"], ms["head"]), rtt = await self._call("fusion", "text encoder + head",
                                                                         model.fuse, hidden, text)
        ms["queue_wait"] = max(0.0, wait + rtt - ms["text_encoder"] - ms["head"])
        return np.asarray(probs), text, flagged, ms

    async def _call(self, key: str, stage: str, method, *args) -> tuple[Any, float]:
        """One deployment call with retries on replica death and a timeout: (result, round trip ms)."""
        deployment = ASR if key == "asr" else MODEL
        for attempt in itertools.count():
            start = time.perf_counter()
            self.calls[key] += 1
            response = method.remote(*args)
            try:
                result = await asyncio.wait_for(_resolved(response), self.timeout_s)
                return result, (time.perf_counter() - start) * 1000
            except asyncio.TimeoutError:
                with contextlib.suppress(Exception):
                    response.cancel()
                self._count(self.failed, deployment)
                raise BackendError(f"{stage} failed: no answer from the {deployment} deployment within "
                                   f"{self.timeout_s:g} s (request_timeout_s)") from None
            except Exception as e:
                cause = getattr(e, "cause", None) or e  # RayTaskError carries the replica's exception
                if not _retryable(e) or attempt >= self.retries:
                    self._count(self.failed, deployment)
                    if _retryable(e):
                        raise BackendError(f"{stage} failed: the {deployment} replica died and {attempt} "
                                           f"retr{'y' if attempt == 1 else 'ies'} did not help: "
                                           f"{type(e).__name__}") from e
                    raise _stage_error(stage, cause) from e
                self._count(self.retried, deployment)
                log.warning("%s: a %s replica died (%s); sending the utterance again (retry %d of %d)",
                            stage, deployment, type(e).__name__, attempt + 1, self.retries)
                await asyncio.sleep(0.1 * 2 ** attempt)
            finally:
                self.calls[key] -= 1
        raise AssertionError("unreachable")

    @staticmethod
    def _count(counter, deployment: str) -> None:
        if counter is not None:
            counter.labels(deployment).inc()


async def _resolved(response):
    return await response


def _retryable(error: BaseException) -> bool:
    """A call that failed because its replica died or was unreachable (sent again), not because of its input."""
    return any(t.__name__ in _RETRYABLE for t in type(error).__mro__)


