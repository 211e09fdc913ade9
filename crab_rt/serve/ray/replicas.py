"""The `CrabModel` and `CrabAsr` deployments: the bundle's model and faster-whisper, batching utterances from
every stream with `@serve.batch`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from typing import Any

import numpy as np

from crab_rt.runtime.asr import AsrConfig
from crab_rt.serve.ray.serve_config import bundle_batch_max, pipeline_from_dict

log = logging.getLogger(__name__)


def _assigned(kind: str) -> float:
    """The CPUs or GPUs Ray assigned to this replica (0 outside Ray)."""
    try:
        import ray

        return float(ray.get_runtime_context().get_assigned_resources().get(kind, 0.0))
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return 0.0


def _threads(configured: int) -> int:
    return configured or max(1, int(round(_assigned("CPU"))))


def _make_batched(fn, max_batch_size: int, wait_s: float):
    """`fn(list) -> list` as a `@serve.batch` function of one item."""
    from ray import serve

    async def batched(items: list) -> list:
        return await fn(items)

    return serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=wait_s)(batched)


class _Batched:
    """The replicas' shared part: a one-thread executor for the blocking calls and `@serve.batch` setters."""

    def _setup_batching(self, name: str, handlers: dict[str, Any], default_batch: int, cap: int | None) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
        self._cap = cap
        self._batchers = {key: _make_batched(fn, default_batch, 0.01) for key, fn in handlers.items()}
        self.max_batch_size = default_batch

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's `user_config`: {"max_batch_size": n (0: keep), "batch_wait_timeout_s": s}; no restart."""
        n = int(user_config.get("max_batch_size") or self.max_batch_size)
        if self._cap is not None and n > self._cap:
            log.warning("max_batch_size %d is more than the bundle's shape_ranges batch max %d: using %d",
                        n, self._cap, self._cap)
            n = self._cap
        self.max_batch_size = n
        for batcher in self._batchers.values():
            batcher.set_max_batch_size(n)
            if "batch_wait_timeout_s" in user_config:
                batcher.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    async def _in_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)


class ModelReplica(_Batched):
    """The `CrabModel` deployment: the bundle's encoders and head on one backend, batching across streams.

    Args:
        bundle: the bundle folder (the same path on every node).
        pipeline: `PipelineConfig` as a dict (backend, precision, threads, max_batch, ...).
    """

    def __init__(self, bundle: str, pipeline: dict[str, Any]) -> None:
        from crab_rt.runtime.emotion_model import EmotionModel

        config = pipeline_from_dict(pipeline)
        on_gpu = _assigned("GPU") > 0
        backend = config.backend if on_gpu or config.backend != "auto" else "onnxruntime"
        self.model = EmotionModel.load(bundle, backend, 0 if on_gpu else None, config.precision,
                                       _threads(config.threads), config.ort_spinning)
        cap = bundle_batch_max(bundle)
        self._setup_batching("crab-model", {"speech": self._speech_batch, "fuse": self._fuse_batch},
                             min(config.max_batch, cap or config.max_batch), cap)
        self._info = {"labels": list(self.model.labels), "uses_speech": self.model.uses_speech,
                      "uses_text": self.model.uses_text, "has_voice": self.model.has_voice,
                      "backend": self.model.choice.describe(),
                      "max_audio_s": float(self.model.bundle.max_audio_s), "bundle": str(bundle)}

    async def info(self) -> dict[str, Any]:
        return {**self._info, "max_batch_size": self.max_batch_size}

    async def speech(self, audio: np.ndarray) -> tuple[np.ndarray, float, np.ndarray | None, float]:
        """Speech encoder on one utterance (batched with others): (hidden states [T, D], batch ms, the voice-only
        classifier's calibrated probabilities [C] or None without one, its batch ms)."""
        return await self._batchers["speech"](audio)

    async def fuse(self, speech: np.ndarray | None, text: str) -> tuple[np.ndarray, float, float]:
        """Text encoder + head on one utterance (batched): (probabilities [C], text encoder ms, head ms)."""
        return await self._batchers["fuse"]((speech, text))

    async def _speech_batch(self, audios: list[np.ndarray]) -> list[tuple[np.ndarray, float, Any, float]]:
        def work() -> list[tuple[np.ndarray, float, Any, float]]:
            start = time.perf_counter()
            features = self.model.encode_speech(audios)
            mid = time.perf_counter()
            # the voice-only classifier costs well under a millisecond: run for every utterance, sent if asked
            voice = self.model.classify_voice(features) if self.model.has_voice else [None] * len(features)
            end = time.perf_counter()
            return [(f.hidden, (mid - start) * 1000, v, (end - mid) * 1000) for f, v in zip(features, voice)]

        return await self._in_pool(work)

    async def _fuse_batch(self, items: list[tuple[np.ndarray | None, str]]) -> list[tuple[np.ndarray, float, float]]:
        from crab_rt.runtime.emotion_model import Features

        def work() -> list[tuple[np.ndarray, float, float]]:
            start = time.perf_counter()
            text = self.model.encode_text([t for _, t in items]) if self.model.uses_text else None
            mid = time.perf_counter()
            speech = [Features(h) for h, _ in items] if self.model.uses_speech else None
            probs = self.model.classify(speech, text)
            end = time.perf_counter()
            return [(p, (mid - start) * 1000, (end - mid) * 1000) for p in probs]

        return await self._in_pool(work)


class AsrReplica(_Batched):
    """The `CrabAsr` deployment: faster-whisper, batching utterances across streams.

    Args:
        asr: `AsrConfig` as a dict; the device follows the replica's GPUs (see the module docstring).
    """

    def __init__(self, asr: dict[str, Any]) -> None:
        from crab_rt.runtime.asr import Transcriber

        on_gpu = _assigned("GPU") > 0
        config = dataclasses.replace(AsrConfig(**asr), device="cuda" if on_gpu else "cpu", device_index=0)
        config = dataclasses.replace(config, cpu_threads=_threads(config.cpu_threads))
        self.transcriber = Transcriber(config)
        self._setup_batching("crab-asr", {"transcribe": self._transcribe_batch}, 1, None)
        self._info = {"model": str(self.transcriber.model_path), "device": self.transcriber.device,
                      "language": config.language}

    async def info(self) -> dict[str, Any]:
        return {**self._info, "max_batch_size": self.max_batch_size}

    async def transcribe(self, audio: np.ndarray) -> tuple[str, bool, float]:
        """One utterance (batched with others): (text, flagged by the guard, batch ms)."""
        return await self._batchers["transcribe"](audio)

    async def _transcribe_batch(self, audios: list[np.ndarray]) -> list[tuple[str, bool, float]]:
        def work() -> list[tuple[str, bool, float]]:
            start = time.perf_counter()
            results = self.transcriber.transcribe_batch(audios)
            ms = (time.perf_counter() - start) * 1000
            return [(r.text, r.flagged, ms) for r in results]

        return await self._in_pool(work)


