"""`python benchmarks/e2e.py`: a long recording through the whole Pipeline, end-of-speech-to-event latency.

Default input: a synthetic conversation of about 60 s, made on the fly;
`--input` replays a real file. Real time by default (the latency a live user
sees); `--no-realtime` feeds as fast as possible. Reports per-stage latency
percentiles, pipeline overhead beyond model time, real-time factor, CPU time
and peak RSS.
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run", "add_pipeline_arguments", "OVERHEAD_TARGET_MS"]

OVERHEAD_TARGET_MS = 2.0


def add_pipeline_arguments(p: argparse.ArgumentParser, duration_s: float) -> None:
    from crab_bench.common import add_common_arguments, add_spinning_argument

    add_common_arguments(p)
    add_spinning_argument(p)
    p.add_argument("--preset", default="base", help="model preset: tiny, base or large (default base)")
    p.add_argument("--backend", default="onnxruntime", help="emotion model backend (default onnxruntime)")
    p.add_argument("--asr", default=None,
                   help="faster-whisper model (name in the local cache or CTranslate2 folder); 'none' = no ASR; "
                        "'random:whisper-tiny|base|small' = random weights in the real shape, built offline; "
                        "default: the micro offline Whisper (cheap, not a real ASR cost)")
    p.add_argument("--asr-compute-type", default="default",
                   help="CTranslate2 compute type of the ASR: default, int8, float32, float16, ... (default: default)")
    p.add_argument("--duration-s", type=float, default=duration_s,
                   help=f"length of the synthetic conversation (default {duration_s:g})")
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                   help="feed at real time (default) or as fast as possible (--no-realtime)")
    p.add_argument("--chunk-ms", type=float, default=32.0, help="feed chunk in ms (default 32)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_pipeline_arguments(p, 60.0)
    p.add_argument("--input", default=None, help="audio file to replay instead of the synthetic conversation")


def run(args: argparse.Namespace) -> int:
    from crab_bench.common import finish_run, resolve_threads, start_run
    from crab_bench.machine import cpu_seconds
    from crab_bench.replay import conversation_audio, latency_table, make_pipeline, replay, warm_up
    from crab_rt.audio import SAMPLE_RATE, load_audio
    from crab_rt.errors import ConfigError

    if not 1.0 <= args.duration_s <= 3600 or not 1.0 <= args.chunk_ms <= 1000:
        raise ConfigError(f"--duration-s must be in [1, 3600] and --chunk-ms in [1, 1000], got "
                          f"{args.duration_s} and {args.chunk_ms}")
    say = print if not args.quiet else (lambda *a, **k: None)
    threads = resolve_threads(args.threads)
    ctx = start_run(args, threads)
    if args.input:
        audio, source = load_audio(args.input), f"file {args.input}"
    else:
        audio, source = conversation_audio(args.duration_s, args.seed)
    pipeline, info = make_pipeline(args, threads, say)
    try:
        warm_up(pipeline)
        pace = "real time" if args.realtime else "as fast as possible"
        say(f"e2e: {source}, {audio.size / SAMPLE_RATE:.1f} s, {pace}; "
            f"{info['backend']}; ASR: {info['asr']}")
        cpu0 = cpu_seconds()
        out = replay(pipeline, [audio], args.realtime, args.chunk_ms)
        cpu = cpu_seconds() - cpu0
    finally:
        pipeline.close()
    table = latency_table(out["latencies"])
    overhead = table["overhead"]
    payload = {
        "kind": "e2e", **info, "input": source, "realtime": args.realtime, "chunk_ms": args.chunk_ms,
        "threads": threads, "utterances": len(out["latencies"]), "audio_s": round(out["audio_s"], 3),
        "wall_s": round(out["wall_s"], 3), "real_time_factor": round(out["wall_s"] / out["audio_s"], 4),
        "cpu_s": round(cpu, 3), "cpu_s_per_audio_s": round(cpu / out["audio_s"], 4), "dropped": out["dropped"],
        "utterance_s": [round(e.end_s - e.start_s, 3) for e in sorted(out["events"], key=lambda e: e.start_s)],
        "latency_ms": table,
        "per_utterance_ms": out["latencies"],
        "target": {"what": "pipeline overhead beyond model time, p50 per utterance", "target_ms": OVERHEAD_TARGET_MS,
                   "measured_ms": overhead.get("p50"),
                   "met": overhead.get("p50") is not None and overhead["p50"] < OVERHEAD_TARGET_MS},
    }
    say(_summary_line(payload))
    finish_run(ctx, f"e2e_{args.preset}", payload, markdown(payload, "End to end"), lambda stem: plots(stem, [payload],
               ["e2e"]), say)
    return 0


def _summary_line(p: dict) -> str:
    t = p["latency_ms"]
    return (f"  {p['utterances']} utterances; end_to_event p50 {t['end_to_event'].get('p50')} ms, p95 "
            f"{t['end_to_event'].get('p95')} ms; overhead p50 {t['overhead'].get('p50')} ms; RTF {p['real_time_factor']}; "
            f"CPU {p['cpu_s_per_audio_s']} s per audio s")


def markdown(p: dict, title: str) -> tuple[str, list, list]:
    from crab_bench.report import markdown_table

    rows = [[k, v.get("n"), v.get("mean"), v.get("p50"), v.get("p95"), v.get("p99")] for k, v in p["latency_ms"].items()]
    notes = [
        f"model: preset {p['preset']} ({p['bundle']['speech_encoder']} + {p['bundle']['text_encoder']}, random weights), "
        f"{p['backend']}; ONNX Runtime threads {p['threads']}, idle spinning {'on' if p['ort_spinning'] else 'off'}",
        f"ASR: {p['asr']} (device {p['asr_device']})",
        f"input: {p['input']}, {p['audio_s']} s, fed {'at real time' if p['realtime'] else 'as fast as possible'} in "
        f"{p['chunk_ms']:g} ms chunks; warm-up pass excluded",
        f"{p['utterances']} utterances, dropped {p['dropped']}; real-time factor (wall / audio) {p['real_time_factor']}; "
        f"CPU {p['cpu_s']} s = {p['cpu_s_per_audio_s']} CPU s per audio s; peak RSS in the JSON (process)",
        "critical_path = max(asr, speech_encoder) + text_encoder + head; overhead = end_to_event - critical_path "
        "(VAD hangover excluded: end of speech is when the segmenter decided; queue waits are in the overhead)",
        f"target: overhead p50 < {OVERHEAD_TARGET_MS:g} ms per utterance: **{'met' if p['target']['met'] else 'missed'}** "
        f"({p['target']['measured_ms']} ms)",
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
