"""`python benchmarks/e2e.py`: a long recording through the whole Pipeline, end-of-speech-to-event latency.

Default input: a synthetic conversation of about 60 s, made on the fly;
`--input` replays a real file. Real time by default (the latency a live user
sees); `--no-realtime` feeds as fast as possible. Reports per-stage latency
percentiles, pipeline overhead beyond model time, real-time factor, CPU time
and peak RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import ClassVar

from crab_bench.bundles import PRESETS, check_asr_spec
from crab_bench.common import (
    CommonBenchConfig,
    add_bool_option,
    add_common_arguments,
    add_spinning_argument,
    check_choice,
    check_compute_type,
    check_range,
    finish_run,
    resolve_threads,
    start_run,
)
from crab_rt.backends.base import BACKEND_NAMES
from crab_rt.cli._options import add_config_option
from crab_rt.errors import ConfigError
from crab_rt.runtime.asr import WINDOWS

__all__ = ["CONFIG", "E2EBenchConfig", "PipelineBenchConfig", "add_arguments", "run", "add_pipeline_arguments",
           "OVERHEAD_TARGET_MS"]

OVERHEAD_TARGET_MS = 2.0


@dataclasses.dataclass(frozen=True)
class PipelineBenchConfig(CommonBenchConfig):
    """Options of the kinds that replay audio through a Pipeline (e2e, concurrency).

    Attributes:
        preset: model sizes, one of PRESETS: "tiny", "base" or "large".
        backend: emotion model backend, one of crab-rt's BACKEND_NAMES.
        asr: faster-whisper model (a name in the local cache or a CTranslate2 folder); "none" = no ASR;
            "random:whisper-tiny|base|small" = random weights in the real shape, built offline;
            None = the micro offline Whisper (cheap, not a real ASR cost).
        asr_compute_type: CTranslate2 compute type of the ASR ("default", "int8", "float32", ...).
        duration_s: length of the synthetic conversation (per stream), seconds.
        realtime: feed at real time; False = as fast as possible.
        chunk_ms: feed chunk, milliseconds.
        ort_spinning: let idle ONNX Runtime CPU threads spin.
        incremental_speech: run the speech front end while the person speaks where the bundle allows it
            (`PipelineConfig.incremental_speech`).
        cores: CPUs of the pipeline's core budget (`PipelineConfig.cores`; 0 = those of this process).
        asr_threads: CTranslate2 threads; 0 = `threads` if given, else the core budget's.
        asr_window: Whisper's encoder window, "30" or "auto" (`AsrConfig.window`).
        provisional: also emit provisional events (`PipelineConfig.provisional`; the bundle's voice-only
            classifier), whose end of speech to event is reported beside the final events'.
        bundle: a bundle folder to run instead of the preset's random-weight one (e.g. `make demo`'s
            demo/bundle, a trained model); the result files are then named e2e_bundle[_tag].
    """

    preset: str = "base"
    backend: str = "onnxruntime"
    asr: str | None = None
    asr_compute_type: str = "default"
    duration_s: float = 60.0
    realtime: bool = True
    chunk_ms: float = 32.0
    ort_spinning: bool = False
    incremental_speech: bool = True
    cores: int = 0
    asr_threads: int = 0
    asr_window: str = "30"
    provisional: bool = False
    bundle: str | None = None

    MAX_DURATION_S: ClassVar[float] = 3600.0

    def validate(self) -> None:
        super().validate()
        check_choice("--preset", self.preset, PRESETS)
        check_choice("--backend", self.backend, BACKEND_NAMES)
        check_asr_spec("--asr", self.asr)
        check_compute_type("--asr-compute-type", self.asr_compute_type)
        check_range("--duration-s", self.duration_s, 1, self.MAX_DURATION_S)
        check_range("--chunk-ms", self.chunk_ms, 1, 1000)
        check_range("--cores", self.cores, 0, 1024, note=" (0 = the CPUs of this process)")
        check_range("--asr-threads", self.asr_threads, 0, note=" (0 = --threads, else the core budget's)")
        check_choice("--asr-window", self.asr_window, WINDOWS)
        if self.bundle is not None and not (Path(self.bundle) / "manifest.json").is_file():
            raise ConfigError(f"--bundle {self.bundle}: not a bundle folder (no manifest.json)")


@dataclasses.dataclass(frozen=True)
class E2EBenchConfig(PipelineBenchConfig):
    """Options of `e2e` (and of PipelineBenchConfig, CommonBenchConfig).

    Attributes:
        input: audio file to replay instead of the synthetic conversation; None = synthetic.
    """

    input: str | None = None


CONFIG = E2EBenchConfig


def add_pipeline_arguments(p: argparse.ArgumentParser, cls: type[PipelineBenchConfig]) -> None:
    """The flags of PipelineBenchConfig's fields, with the defaults of `cls`."""
    add_common_arguments(p)
    add_spinning_argument(p, cls)
    add_config_option(p, "--preset", cls, "preset", "model preset: tiny, base or large")
    add_config_option(p, "--backend", cls, "backend", "emotion model backend")
    add_config_option(p, "--asr", cls, "asr", "faster-whisper model (name in the local cache or CTranslate2 "
                      "folder); 'none' = no ASR; 'random:whisper-tiny|base|small' = random weights in the real "
                      "shape, built offline", type=str,
                      default_text="the micro offline Whisper, cheap, not a real ASR cost")
    add_config_option(p, "--asr-compute-type", cls, "asr_compute_type",
                      "CTranslate2 compute type of the ASR: default, int8, float32, float16, ...")
    add_config_option(p, "--duration-s", cls, "duration_s", "length of the synthetic conversation in seconds")
    add_bool_option(p, "--realtime", cls, "realtime", "feed at real time or as fast as possible")
    add_config_option(p, "--chunk-ms", cls, "chunk_ms", "feed chunk in ms")
    add_bool_option(p, "--incremental-speech", cls, "incremental_speech",
                    "run the speech front end while the person speaks (where the bundle's parity allows)")
    add_config_option(p, "--cores", cls, "cores", "CPUs the pipeline's core budget splits between the stages "
                      "(0 = those of this process); --threads and --asr-threads override their share")
    add_config_option(p, "--asr-threads", cls, "asr_threads", "CTranslate2 threads (0 = --threads if given, else "
                      "the core budget's)")
    add_config_option(p, "--asr-window", cls, "asr_window", "Whisper's encoder window: 30 s, or auto (the "
                      "utterance plus 10 s)", choices=WINDOWS)
    add_bool_option(p, "--provisional", cls, "provisional",
                    "also emit provisional events (the voice-only classifier, before ASR) and time them")
    add_config_option(p, "--bundle", cls, "bundle", "run this bundle folder instead of the preset's random-weight "
                      "one (e.g. make demo's demo/bundle)", type=str)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_pipeline_arguments(p, E2EBenchConfig)
    add_config_option(p, "--input", E2EBenchConfig, "input",
                      "audio file to replay instead of the synthetic conversation", type=str)


def run(config: E2EBenchConfig) -> int:
    """Replay one recording through the Pipeline; writes e2e_<preset>[_tag].json, .md and the stages PNG."""
    from crab_bench.machine import cpu_seconds
    from crab_bench.replay import conversation_audio, latency_table, make_pipeline, replay, warm_up
    from crab_rt.audio import SAMPLE_RATE, load_audio

    config.validate()
    say = print if not config.quiet else (lambda *a, **k: None)
    threads = resolve_threads(config.threads)
    ctx = start_run(config, threads)
    if config.input:
        audio, source = load_audio(config.input), f"file {config.input}"
    else:
        audio, source = conversation_audio(config.duration_s, config.seed, config.voice)
    pipeline, info = make_pipeline(config, threads, say)
    try:
        warm_up(pipeline)
        pace = "real time" if config.realtime else "as fast as possible"
        say(f"e2e: {source}, {audio.size / SAMPLE_RATE:.1f} s, {pace}; "
            f"{info['backend']}; ASR: {info['asr']}")
        cpu0 = cpu_seconds()
        out = replay(pipeline, [audio], config.realtime, config.chunk_ms)
        cpu = cpu_seconds() - cpu0
    finally:
        pipeline.close()
    table = latency_table(out["latencies"])
    overhead = table["overhead"]
    payload = {
        "kind": "e2e", **info, "input": source, "realtime": config.realtime, "chunk_ms": config.chunk_ms,
        "threads": threads, "utterances": len(out["latencies"]), "audio_s": round(out["audio_s"], 3),
        "wall_s": round(out["wall_s"], 3), "real_time_factor": round(out["wall_s"] / out["audio_s"], 4),
        "cpu_s": round(cpu, 3), "cpu_s_per_audio_s": round(cpu / out["audio_s"], 4), "dropped": out["dropped"],
        "utterance_s": [round(e.end_s - e.start_s, 3) for e in sorted(out["events"], key=lambda e: e.start_s)],
        "latency_ms": table,
        "per_utterance_ms": out["latencies"],
        **_provisional(out),
        "target": {"what": "pipeline overhead beyond model time, p50 per utterance", "target_ms": OVERHEAD_TARGET_MS,
                   "measured_ms": overhead.get("p50"),
                   "met": overhead.get("p50") is not None and overhead["p50"] < OVERHEAD_TARGET_MS},
    }
    say(_summary_line(payload))
    finish_run(ctx, "e2e_bundle" if config.bundle else f"e2e_{config.preset}", payload, markdown(payload, "End to end"),
               lambda stem: plots(stem, [payload], ["e2e"]), say)
    return 0


def _provisional(out: dict) -> dict:
    """The provisional events' end of speech to event, and its p50 as a share of the final events'."""
    from crab_bench.stats import summarize_ms

    lat = out["provisional_latencies"]
    if not lat:
        return {}
    table = {k: summarize_ms([x[k] for x in lat if k in x], (50, 95, 99))
             for k in ("end_to_event", "speech_encoder", "speech_classifier", "queue_wait")}
    final = summarize_ms([x["end_to_event"] for x in out["latencies"]], (50,)).get("p50")
    share = None if not final else round(table["end_to_event"]["p50"] / final, 4)
    return {"provisional": {"events": len(lat), "latency_ms": table, "p50_share_of_final": share}}


def _summary_line(p: dict) -> str:
    t = p["latency_ms"]
    line = (f"  {p['utterances']} utterances; end_to_event p50 {t['end_to_event'].get('p50')} ms, p95 "
            f"{t['end_to_event'].get('p95')} ms; overhead p50 {t['overhead'].get('p50')} ms; "
            f"RTF {p['real_time_factor']}; "
            f"CPU {p['cpu_s_per_audio_s']} s per audio s")
    if "provisional" in p:
        e = p["provisional"]["latency_ms"]["end_to_event"]
        line += (f"\n  provisional: end_to_event p50 {e.get('p50')} ms, p95 {e.get('p95')} ms "
                 f"({p['provisional']['p50_share_of_final']} of the final p50)")
    return line


def markdown(p: dict, title: str) -> tuple[str, list, list]:
    from crab_bench.report import markdown_table

    rows = [[k, v.get("n"), v.get("mean"), v.get("p50"), v.get("p95"), v.get("p99")]
            for k, v in p["latency_ms"].items()]
    if "provisional" in p:
        rows += [[f"provisional {k}", v.get("n"), v.get("mean"), v.get("p50"), v.get("p95"), v.get("p99")]
                 for k, v in p["provisional"]["latency_ms"].items()]
    met = "met" if p["target"]["met"] else "missed"
    b = p["bundle"]
    model = (f"the bundle {b['path']} ({b['speech_encoder']} + {b['text_encoder']})" if b.get("path") else
             f"preset {p['preset']} ({b['speech_encoder']} + {b['text_encoder']}, random weights)")
    notes = [
        f"model: {model}, "
        f"{p['backend']}; ONNX Runtime threads {p['threads']}, idle spinning {'on' if p['ort_spinning'] else 'off'}",
        *([f"core budget: {p['core_budget']['described']}"] if "core_budget" in p else []),
        f"ASR: {p['asr']} (device {p['asr_device']})",
        *([f"incremental speech encoding: {'on' if p['incremental_speech']['used'] else 'off'} "
           f"({'asked' if p['incremental_speech']['asked'] else 'turned off'}; {p['incremental_speech']['note']}); "
           "speech_frontend = front end while speaking, speech_tail = its share of speech_encoder at the end"]
          if "incremental_speech" in p else []),
        f"input: {p['input']}, {p['audio_s']} s, fed {'at real time' if p['realtime'] else 'as fast as possible'} in "
        f"{p['chunk_ms']:g} ms chunks; warm-up pass excluded",
        f"{p['utterances']} utterances, dropped {p['dropped']}; "
        f"real-time factor (wall / audio) {p['real_time_factor']}; "
        f"CPU {p['cpu_s']} s = {p['cpu_s_per_audio_s']} CPU s per audio s; peak RSS in the JSON (process)",
        "critical_path = max(asr, speech_encoder) + text_encoder + head; overhead = end_to_event - critical_path "
        "(VAD hangover excluded: end of speech is when the segmenter decided; queue waits are in the overhead)",
        f"target: overhead p50 < {OVERHEAD_TARGET_MS:g} ms per utterance: **{met}** "
        f"({p['target']['measured_ms']} ms)",
        *([f"provisional events (the voice-only classifier, before ASR): {p['provisional']['events']}; their "
           f"end_to_event p50 is {p['provisional']['p50_share_of_final']} of the final events'"]
          if "provisional" in p else []),
    ]
    return title, [("Latency per stage (ms)", markdown_table(["stage", "n", "mean", "p50", "p95", "p99"], rows))], notes


def plots(stem, payloads: list[dict], categories: list[str]) -> list:
    """Stacked p50 bars of the critical path stages plus the overhead, one bar per run."""
    from pathlib import Path

    from crab_bench.report import stacked_bars

    def p50(p, k):
        return float(p["latency_ms"][k].get("p50") or 0.0)

    stacks = {
        "max(asr, speech_encoder)": [max(p50(p, "asr"), p50(p, "speech_encoder")) for p in payloads],
        "text_encoder": [p50(p, "text_encoder") for p in payloads],
        "head": [p50(p, "head") for p in payloads],
        "overhead": [max(0.0, p50(p, "end_to_event") - p50(p, "critical_path")) for p in payloads],
    }
    path = Path(f"{stem}_stages.png")
    stacked_bars(path, "end-of-speech to event, p50 per stage (ms)", categories, stacks)
    return [path]
