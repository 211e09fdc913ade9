"""Feeding recordings through a Pipeline for the e2e and concurrency benchmarks.

Each stream gets its own feeder thread that pushes fixed chunks, paced by the
clock in real-time mode (chunk i is sent at t0 + i * chunk duration) or as
fast as `accept` returns otherwise. Latencies are the pipeline's own per-event
stage timings; the pipeline overhead of an utterance is its end-to-event time
minus the model critical path, max(asr, speech encoder) + text encoder + head
(the speech encoder runs while ASR runs).
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crab_rt.audio import SAMPLE_RATE, load_audio

if TYPE_CHECKING:
    from crab_bench.e2e import PipelineBenchConfig

__all__ = ["conversation_audio", "make_pipeline", "warm_up", "replay", "latency_table", "STAGES"]

# speech_frontend: the speech front end's time while the person spoke (incremental encoding; off the critical
# path); speech_tail: its time on the remaining frames at end of speech (part of speech_encoder).
STAGES = ("end_to_event", "critical_path", "overhead", "asr", "speech_encoder", "text_encoder", "head", "queue_wait",
          "speech_frontend", "speech_tail")


def conversation_audio(duration_s: float, seed: int, voice: str = "harmonic") -> tuple[np.ndarray, str]:
    """A synthetic conversation of about `duration_s` seconds (turns of 2 to 6 s), and a description.

    `voice="harmonic"` (the home-made voice) gives the same audio as before espeak-ng became the
    corpus default, so results stay comparable; "espeak" speaks real sentences, for a real Whisper.
    """
    from crab_rt.data.synth import SynthConfig, synthesize_conversation

    turns = max(1, int(round(duration_s / 5.4)))
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "conversation.wav"
        config = SynthConfig(min_duration_s=2.0, max_duration_s=6.0, voice=voice)
        synthesize_conversation(wav, config, num_turns=turns, seed=seed)
        audio = load_audio(wav)
    return audio, f"synthetic conversation ({voice} voice), {turns} turns of 2-6 s, seed {seed}"


def make_pipeline(config: PipelineBenchConfig, threads: int, say=print):
    """The bundle of `config.preset` and an ASR (tiny offline Whisper unless `config.asr`) in one Pipeline.

    Threads: `config.threads` (ONNX Runtime, speech and text encoders) and `config.asr_threads` (CTranslate2;
    0: `config.threads`) override the pipeline's core budget for `config.cores` CPUs; with both 0 the budget
    decides (`crab_rt.runtime.cores`). `threads` (the resolved `--threads`) is only recorded by the callers.

    Returns:
        (pipeline, description dict of model and ASR).
    """
    from crab_bench.bundles import bundle_info, ensure_bundle, resolve_asr
    from crab_rt.runtime.asr import AsrConfig
    from crab_rt.runtime.pipeline import Pipeline, PipelineConfig

    own = getattr(config, "bundle", None)
    bundle = Path(own) if own else ensure_bundle(config.preset, config.cache_dir, say)
    model, asr_note = resolve_asr(config.asr, config.cache_dir)
    asr = None
    if model is not None:
        window = getattr(config, "asr_window", "30")
        asr = AsrConfig(model=model, cpu_threads=getattr(config, "asr_threads", 0) or config.threads,
                        compute_type=config.asr_compute_type, window=window)
        asr_note += f", compute type {config.asr_compute_type}, window {window}"
    incremental = getattr(config, "incremental_speech", True)
    provisional = getattr(config, "provisional", False)
    pipeline = Pipeline(bundle, PipelineConfig(asr=asr, backend=config.backend, threads=config.threads,
                                               cores=getattr(config, "cores", 0), ort_spinning=config.ort_spinning,
                                               incremental_speech=incremental, provisional=provisional))
    info = {"preset": None if own else config.preset,
            "bundle": _own_bundle_info(bundle) if own else bundle_info(bundle),
            "backend": pipeline.model.choice.describe(),
            "ort_spinning": config.ort_spinning, "asr": asr_note, "provisional_events": provisional,
            "incremental_speech": {"asked": incremental, "used": bool(pipeline._incremental),
                                   "note": pipeline.model.split_note},
            "asr_device": None if pipeline.transcriber is None else pipeline.transcriber.device,
            "core_budget": {**dataclasses.asdict(pipeline.cores), "described": pipeline.cores.describe()}}
    return pipeline, info


def _own_bundle_info(bundle: Path) -> dict:
    """What the result files say of a bundle given with --bundle: its folder and encoder types."""
    import json

    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    dims = manifest.get("dims", {})
    graphs = manifest.get("graphs", {})
    return {"path": str(bundle), "speech_encoder": f"speech encoder (width {dims.get('speech_hidden')})",
            "text_encoder": f"text encoder (width {dims.get('text_hidden')})", "graphs": list(graphs),
            "checkpoint": (manifest.get("provenance") or {}).get("checkpoint")}


def warm_up(pipeline) -> None:
    """One untimed pass of every engine (first calls allocate and tune)."""
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(2 * SAMPLE_RATE)).astype(np.float32)
    pipeline.model.predict([audio], ["warm up"])
    if pipeline.model.split is not None:
        pipeline.model.encode_speech_split([audio], [None])
    if pipeline.transcriber is not None:
        pipeline.transcriber.transcribe(audio)


def replay(pipeline, audios: Sequence[np.ndarray], realtime: bool, chunk_ms: float = 32.0) -> dict:
    """Feed one stream per audio at once; returns events, latencies and wall time.

    Returns:
        {"events": [EmotionEvent] (final), "latencies": [dict] (theirs), "provisional_latencies": [dict] (of the
        provisional events, when the pipeline sends them), "wall_s", "audio_s", "dropped"}.
    """
    chunk = max(1, int(round(chunk_ms * SAMPLE_RATE / 1000)))
    events, lock = [], threading.Lock()

    def collect(event):
        with lock:
            events.append(event)

    streams = [pipeline.create_stream(f"s{i}", on_event=collect) for i in range(len(audios))]
    start = time.perf_counter()
    errors: list[BaseException] = []

    def feed(stream, audio):
        try:
            for i, k in enumerate(range(0, audio.size, chunk)):
                if realtime:
                    delay = start + i * chunk / SAMPLE_RATE - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                stream.accept(audio[k: k + chunk])
            stream.flush()
            stream.wait()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)

    feeders = [threading.Thread(target=feed, args=(s, a), daemon=True) for s, a in zip(streams, audios)]
    for t in feeders:
        t.start()
    for t in feeders:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    pipeline.check()
    # Raw per-utterance values from the events: pipeline.latencies only keeps bounded histograms.
    provisional = [dict(e.latency_ms) for e in events if e.stage == "provisional"]
    events = [e for e in events if e.stage == "final"]
    latencies = [dict(e.latency_ms) for e in events]
    for lat in latencies:
        lat["critical_path"] = max(lat["asr"], lat["speech_encoder"]) + lat["text_encoder"] + lat["head"]
        lat["overhead"] = lat["end_to_event"] - lat["critical_path"]
    return {"events": events, "latencies": latencies, "provisional_latencies": provisional, "wall_s": wall,
            "audio_s": sum(a.size for a in audios) / SAMPLE_RATE, "dropped": sum(s.dropped_utterances for s in streams)}


def latency_table(latencies: Sequence[dict]) -> dict:
    """Per stage: n, mean, p50, p95, p99 (ms)."""
    from crab_bench.stats import summarize_ms

    return {k: summarize_ms([lat[k] for lat in latencies if k in lat], (50, 95, 99)) for k in STAGES}
