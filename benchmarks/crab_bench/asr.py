"""`python benchmarks/asr.py`: faster-whisper latency per utterance vs audio length, per model and compute type.

`--models` takes random-weight Whispers in OpenAI's shapes
("random:whisper-tiny", "-base", "-small", built offline by export/tiny_asr.py:
the encoder compute is real, the transcript is a fixed 8 tokens, so decoding
costs what a short utterance costs), or any faster-whisper name in the local
cache or CTranslate2 folder (real weights; nothing is downloaded).
faster-whisper pads every utterance to a 30 s window, so the encoder cost does
not depend on the utterance length; the sweep over lengths shows it.
Every model gets the same audio: a synthetic conversation cut to each length.
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from crab_bench.common import add_common_arguments

    add_common_arguments(p)
    p.add_argument("--models", default="random:whisper-tiny,random:whisper-small",
                   help="comma list of ASR models: random:whisper-tiny|base|small|micro, a faster-whisper name in "
                        "the local cache, or a CTranslate2 folder (default random:whisper-tiny,random:whisper-small)")
    p.add_argument("--compute-types", default="default,int8",
                   help="CTranslate2 compute types to time each model with (default default,int8)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="ASR device (default auto)")
    p.add_argument("--audio-s", default="1,4,12", help="utterance lengths in seconds (default 1,4,12)")
    p.add_argument("--ref-audio-s", type=float, default=4.0, help="length of the compute-type ratio (default 4)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per point (default 1)")
    p.add_argument("--repeat", type=int, default=10, help="timed calls per point (default 10)")
    p.add_argument("--max-seconds", type=float, default=8.0,
                   help="stop a point early after this many timed seconds, keeping at least 3 calls (0 = never)")


def run(args: argparse.Namespace) -> int:
    from crab_bench.bundles import resolve_asr
    from crab_bench.common import finish_run, resolve_threads, start_run
    from crab_bench.replay import conversation_audio
    from crab_bench.stats import parse_list, summarize_ms, time_calls
    from crab_rt.audio import SAMPLE_RATE
    from crab_rt.errors import ConfigError
    from crab_rt.runtime.asr import AsrConfig, Transcriber

    say = print if not args.quiet else (lambda *a, **k: None)
    threads = resolve_threads(args.threads)
    lengths = parse_list(args.audio_s, float)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    compute_types = [c.strip() for c in args.compute_types.split(",") if c.strip()]
    if not models or not compute_types:
        raise ConfigError("--models and --compute-types need at least one entry each")
    if args.ref_audio_s not in lengths:
        lengths.append(args.ref_audio_s)
    for ct in compute_types:  # reuse the runtime's validation, before anything is built
        AsrConfig(model="x", compute_type=ct).validate()
    ctx = start_run(args, threads)
    resolved = {spec: resolve_asr(spec, ctx["cache_dir"]) for spec in models}  # builds random Whispers once
    if any(model is None for model, _ in resolved.values()):
        raise ConfigError("--models: 'none' is not an ASR model")
    audio, source = conversation_audio(max(lengths) + 2.0, args.seed)
    clips = {a: audio[: int(round(a * SAMPLE_RATE))] for a in sorted(lengths)}
    results = []
    for spec, (model, _) in resolved.items():
        for ct in compute_types:
            engine = Transcriber(AsrConfig(model=model, device=args.device, compute_type=ct, cpu_threads=threads,
                                           guard="off"))
            for a, clip in clips.items():
                last = {}

                def call(engine=engine, clip=clip, last=last):
                    last["text"] = engine.transcribe(clip).text

                stats = summarize_ms(time_calls(call, args.warmup, args.repeat, args.max_seconds))
                results.append({"model": spec, "compute_type": ct, "device": engine.device, "audio_s": a,
                                "words": len(last["text"].split()), "ms": stats})
                say(f"  {spec:<24} {ct:<8} {a:5g} s  p50 {stats['p50']:9.1f} ms  p90 {stats['p90']:9.1f}  n {stats['n']}")
            del engine  # free the model before the next one loads
    ratios = []
    for spec in models:
        ref = {r["compute_type"]: r["ms"]["p50"] for r in results if r["model"] == spec and r["audio_s"] == args.ref_audio_s}
        base = compute_types[0]
        for ct in compute_types[1:]:
            ratios.append({"model": spec, "audio_s": args.ref_audio_s, "baseline": base, "baseline_ms": ref[base],
                           "compute_type": ct, "ms": ref[ct], "speedup": round(ref[base] / ref[ct], 3)})
            say(f"  ratio {spec} {args.ref_audio_s:g} s: {base} / {ct} = {ratios[-1]['speedup']:.2f}x")
    payload = {"kind": "asr", "models": {spec: note for spec, (_, note) in resolved.items()}, "compute_types": compute_types, "device": args.device,
               "threads": threads, "input": f"{source}, cut to each length",
               "settings": {"audio_s": sorted(lengths), "warmup": args.warmup, "repeat": args.repeat,
                            "max_seconds": args.max_seconds, "seed": args.seed, "beam_size": 1, "guard": "off"},
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
    notes += [f"faster-whisper, greedy (beam 1), no-speech guard off, device {p['device']}, {p['threads']} CPU threads; "
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
