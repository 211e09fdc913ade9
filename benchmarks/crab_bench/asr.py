"""`python benchmarks/asr.py`: faster-whisper latency per utterance vs audio length, per model and compute type.

`--models` takes random-weight Whispers in OpenAI's shapes
("random:whisper-tiny", "-base", "-small", built offline by data/tiny_asr.py:
the encoder compute is real, the transcript is a fixed 8 tokens, so decoding
costs what a short utterance costs), or any faster-whisper name in the local
cache or CTranslate2 folder (real weights; nothing is downloaded).
faster-whisper pads every utterance to a 30 s window, so the encoder cost does
not depend on the utterance length; the sweep over lengths shows it.
Every model gets the same audio: a synthetic conversation cut to each length.
"""

from __future__ import annotations

import argparse
import dataclasses

from crab_bench.bundles import check_asr_spec
from crab_bench.common import (
    CommonBenchConfig,
    add_common_arguments,
    add_list_option,
    check_choice,
    check_compute_type,
    check_range,
    finish_run,
    resolve_threads,
    start_run,
)
from crab_rt.cli._options import add_config_option
from crab_rt.errors import ConfigError
from crab_rt.runtime.asr import DEVICES

__all__ = ["CONFIG", "AsrBenchConfig", "add_arguments", "run"]


@dataclasses.dataclass(frozen=True)
class AsrBenchConfig(CommonBenchConfig):
    """Options of `asr` (and of CommonBenchConfig).

    Attributes:
        models: ASR models to time: "random:whisper-tiny|base|small|micro", a faster-whisper name in
            the local cache, or a CTranslate2 folder.
        compute_types: CTranslate2 compute types to time each model with; the first is the ratios' baseline.
        device: ASR device, "auto", "cpu" or "cuda".
        audio_s: utterance lengths, seconds.
        ref_audio_s: utterance length of the compute-type ratios, seconds (added to audio_s when absent).
        warmup: untimed calls per point.
        repeat: timed calls per point (at most).
        max_seconds: a point stops after this many timed seconds, keeping >= 3 calls; 0 = never.
    """

    models: tuple[str, ...] = ("random:whisper-tiny", "random:whisper-small")
    compute_types: tuple[str, ...] = ("default", "int8")
    device: str = "auto"
    audio_s: tuple[float, ...] = (1.0, 4.0, 12.0)
    ref_audio_s: float = 4.0
    warmup: int = 1
    repeat: int = 10
    max_seconds: float = 8.0

    def validate(self) -> None:
        super().validate()
        if not self.models:
            raise ConfigError("--models needs at least one entry")
        for spec in self.models:
            if spec == "none":
                raise ConfigError("--models: 'none' is not an ASR model")
            check_asr_spec("--models", spec)
        if not self.compute_types:
            raise ConfigError("--compute-types needs at least one entry")
        for ct in self.compute_types:
            check_compute_type("--compute-types", ct)
        check_choice("--device", self.device, DEVICES)
        check_range("--audio-s", self.audio_s, 0.1)
        check_range("--ref-audio-s", self.ref_audio_s, 0.1)
        check_range("--warmup", self.warmup, 0)
        check_range("--repeat", self.repeat, 1)
        check_range("--max-seconds", self.max_seconds, 0, note=" (0 = never)")


CONFIG = AsrBenchConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    cls = AsrBenchConfig
    add_common_arguments(p)
    add_list_option(p, "--models", cls, "models", "comma list of ASR models: random:whisper-tiny|base|small|micro, "
                    "a faster-whisper name in the local cache, or a CTranslate2 folder")
    add_list_option(p, "--compute-types", cls, "compute_types", "CTranslate2 compute types to time each model with")
    add_config_option(p, "--device", cls, "device", "ASR device", choices=DEVICES)
    add_list_option(p, "--audio-s", cls, "audio_s", "utterance lengths in seconds", float)
    add_config_option(p, "--ref-audio-s", cls, "ref_audio_s", "length of the compute-type ratio")
    add_config_option(p, "--warmup", cls, "warmup", "untimed calls per point")
    add_config_option(p, "--repeat", cls, "repeat", "timed calls per point")
    add_config_option(p, "--max-seconds", cls, "max_seconds",
                      "stop a point early after this many timed seconds, keeping at least 3 calls (0 = never)")


def run(config: AsrBenchConfig) -> int:
    """Time faster-whisper per model, compute type and length; writes asr[_tag].json, .md and the PNG."""
    from crab_bench.bundles import resolve_asr
    from crab_bench.replay import conversation_audio
    from crab_bench.stats import summarize_ms, time_calls
    from crab_rt.audio import SAMPLE_RATE
    from crab_rt.runtime.asr import AsrConfig, Transcriber

    config.validate()
    say = print if not config.quiet else (lambda *a, **k: None)
    threads = resolve_threads(config.threads)
    lengths = list(config.audio_s)
    models = list(config.models)
    compute_types = list(config.compute_types)
    if config.ref_audio_s not in lengths:
        lengths.append(config.ref_audio_s)
    ctx = start_run(config, threads)
    resolved = {spec: resolve_asr(spec, ctx["cache_dir"]) for spec in models}  # builds random Whispers once
    audio, source = conversation_audio(max(lengths) + 2.0, config.seed, config.voice)
    clips = {a: audio[: int(round(a * SAMPLE_RATE))] for a in sorted(lengths)}
    results = []
    for spec, (model, _) in resolved.items():
        for ct in compute_types:
            engine = Transcriber(AsrConfig(model=model, device=config.device, compute_type=ct, cpu_threads=threads,
                                           guard="off"))
            for a, clip in clips.items():
                last = {}

                def call(engine=engine, clip=clip, last=last):
                    last["text"] = engine.transcribe(clip).text

                stats = summarize_ms(time_calls(call, config.warmup, config.repeat, config.max_seconds))
                results.append({"model": spec, "compute_type": ct, "device": engine.device, "audio_s": a,
                                "words": len(last["text"].split()), "ms": stats})
                say(f"  {spec:<24} {ct:<8} {a:5g} s  p50 {stats['p50']:9.1f} ms  p90 {stats['p90']:9.1f}  "
                    f"n {stats['n']}")
            del engine  # free the model before the next one loads
    ratios = []
    for spec in models:
        ref = {r["compute_type"]: r["ms"]["p50"] for r in results
               if r["model"] == spec and r["audio_s"] == config.ref_audio_s}
        base = compute_types[0]
        for ct in compute_types[1:]:
            ratios.append({"model": spec, "audio_s": config.ref_audio_s, "baseline": base, "baseline_ms": ref[base],
                           "compute_type": ct, "ms": ref[ct], "speedup": round(ref[base] / ref[ct], 3)})
            say(f"  ratio {spec} {config.ref_audio_s:g} s: {base} / {ct} = {ratios[-1]['speedup']:.2f}x")
    payload = {"kind": "asr", "models": {spec: note for spec, (_, note) in resolved.items()},
               "compute_types": compute_types, "device": config.device,
               "threads": threads, "input": f"{source}, cut to each length",
               "settings": {"audio_s": sorted(lengths), "warmup": config.warmup, "repeat": config.repeat,
                            "max_seconds": config.max_seconds, "seed": config.seed, "beam_size": 1, "guard": "off"},
               "results": results, "ratios": ratios}
    finish_run(ctx, "asr", payload, _markdown(payload), lambda stem: _plots(stem, payload), say)
    return 0


def _markdown(p: dict) -> tuple[str, list, list]:
    from crab_bench.report import markdown_table

    series = [(m, ct) for m in p["models"] for ct in p["compute_types"]]
    rows = []
    for a in p["settings"]["audio_s"]:
        row = [a]
        for m, ct in series:
            r = next((r for r in p["results"] if (r["model"], r["compute_type"], r["audio_s"]) == (m, ct, a)), None)
            row.append(None if r is None else f"{r['ms']['p50']:.1f} / {r['ms']['p90']:.1f} (n={r['ms']['n']})")
        rows.append(row)
    table = markdown_table(["audio s", *[f"{m} {ct}" for m, ct in series]], rows)
    ratio_rows = [[r["model"], r["audio_s"], r["baseline"], r["baseline_ms"], r["compute_type"], r["ms"],
                   f"{r['speedup']:.2f}x"] for r in p["ratios"]]
    sections = [("Transcribe one utterance: p50 / p90 ms", table)]
    if ratio_rows:
        sections.append(("Compute types (same run)", markdown_table(
            ["model", "audio s", "baseline", "ms", "compute type", "ms", "speedup"], ratio_rows)))
    notes = [f"{m}: {note}" for m, note in p["models"].items()]
    notes += [f"faster-whisper, greedy (beam 1), no-speech guard off, device {p['device']}, "
              f"{p['threads']} CPU threads; "
              f"input: {p['input']}",
              f"warm-up {p['settings']['warmup']} call(s) excluded; up to {p['settings']['repeat']} timed calls per "
              f"point, a point stops after {p['settings']['max_seconds']:g} s timed (n is shown)"]
    return "ASR latency (faster-whisper)", sections, notes


def _plots(stem, p: dict) -> list:
    from pathlib import Path

    from crab_bench.report import line_panels

    series = {}
    for m in p["models"]:
        for ct in p["compute_types"]:
            rows = sorted((r for r in p["results"] if r["model"] == m and r["compute_type"] == ct),
                          key=lambda r: r["audio_s"])
            series[f"{m} {ct}"] = ([r["audio_s"] for r in rows], [r["ms"]["p50"] for r in rows])
    path = Path(f"{stem}.png")
    line_panels(path, "ASR: transcribe latency vs utterance length",
                [{"title": "faster-whisper, batch 1", "xlabel": "audio (s)", "ylabel": "p50 ms", "series": series}])
    return [path]
