"""`python benchmarks/concurrency.py`: N streams at once through one Pipeline; latency and throughput vs N.

Each stream replays its own synthetic conversation (a different seed, so
utterance ends do not all coincide), fed at real time by default.
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from crab_bench.e2e import add_pipeline_arguments

    add_pipeline_arguments(p, 30.0)
    p.add_argument("--streams", default="1,2,4,8", help="stream counts (default 1,2,4,8)")


def run(args: argparse.Namespace) -> int:
    from crab_bench.common import finish_run, resolve_threads, start_run
    from crab_bench.machine import cpu_seconds
    from crab_bench.replay import conversation_audio, latency_table, make_pipeline, replay, warm_up
    from crab_bench.report import line_panels, markdown_table
    from crab_bench.stats import parse_list
    from crab_rt.errors import ConfigError

    counts = parse_list(args.streams, int)
    if any(not 1 <= n <= 256 for n in counts) or not 1.0 <= args.duration_s <= 3600:
        raise ConfigError(f"--streams must be in [1, 256] and --duration-s in [1, 3600], got {args.streams} and "
                          f"{args.duration_s}")
    say = print if not args.quiet else (lambda *a, **k: None)
    threads = resolve_threads(args.threads)
    ctx = start_run(args, threads)
    audios = [conversation_audio(args.duration_s, args.seed + i)[0] for i in range(max(counts))]
    pipeline, info = make_pipeline(args, threads, say)
    levels = []
    try:
        warm_up(pipeline)
        for n in counts:
            cpu0 = cpu_seconds()
            out = replay(pipeline, audios[:n], args.realtime, args.chunk_ms)
            cpu = cpu_seconds() - cpu0
            table = latency_table(out["latencies"])
            level = {"streams": n, "utterances": len(out["latencies"]), "audio_s": round(out["audio_s"], 3),
                     "wall_s": round(out["wall_s"], 3), "dropped": out["dropped"], "cpu_s": round(cpu, 3),
                     "utterances_per_s": round(len(out["latencies"]) / out["wall_s"], 3),
                     "audio_s_per_wall_s": round(out["audio_s"] / out["wall_s"], 3), "latency_ms": table}
            levels.append(level)
            say(f"  {n} streams: {level['utterances']} utterances, end_to_event p50 {table['end_to_event'].get('p50')} "
                f"p95 {table['end_to_event'].get('p95')} ms, {level['utterances_per_s']} utt/s, "
                f"{level['audio_s_per_wall_s']} audio s per wall s")
    finally:
        pipeline.close()
    payload = {"kind": "concurrency", **info, "realtime": args.realtime, "chunk_ms": args.chunk_ms,
               "threads": threads, "input": f"synthetic conversations of about {args.duration_s:g} s, seeds "
                                            f"{args.seed}..{args.seed + max(counts) - 1}", "levels": levels}
    rows = [[lv["streams"], lv["utterances"], lv["latency_ms"]["end_to_event"].get("p50"),
             lv["latency_ms"]["end_to_event"].get("p95"), lv["latency_ms"]["queue_wait"].get("p50"),
             lv["latency_ms"]["overhead"].get("p50"), lv["utterances_per_s"], lv["audio_s_per_wall_s"], lv["dropped"]]
            for lv in levels]
    notes = [f"model: preset {args.preset}, {info['backend']}; ONNX Runtime idle spinning "
             f"{'on' if args.ort_spinning else 'off'}", f"ASR: {info['asr']}",
             f"input: {payload['input']}, one per stream, fed {'at real time' if args.realtime else 'as fast as possible'}",
             "one Pipeline shared by all streams (utterances ready together are batched)"]
    section = markdown_table(["streams", "utterances", "end_to_event p50 ms", "p95 ms", "queue_wait p50 ms",
                              "overhead p50 ms", "utterances/s", "audio s / wall s", "dropped"], rows)

    def plots(stem):
        from pathlib import Path

        from crab_bench.e2e import plots as stage_bars

        xs = [lv["streams"] for lv in levels]
        path = Path(f"{stem}_vs_streams.png")
        line_panels(path, f"preset {args.preset}: N streams through one pipeline", [
            {"title": "end-of-speech to event", "xlabel": "streams", "ylabel": "ms", "series": {
                "p50": (xs, [lv["latency_ms"]["end_to_event"].get("p50") for lv in levels]),
                "p95": (xs, [lv["latency_ms"]["end_to_event"].get("p95") for lv in levels])}},
            {"title": "throughput", "xlabel": "streams", "ylabel": "per wall second", "series": {
                "utterances/s": (xs, [lv["utterances_per_s"] for lv in levels]),
                "audio s / wall s": (xs, [lv["audio_s_per_wall_s"] for lv in levels])}},
        ])
        return [path, *stage_bars(stem, levels, [f"{n} streams" for n in xs])]

    finish_run(ctx, f"concurrency_{args.preset}", payload,
               (f"Concurrency, preset {args.preset}", [("Latency and throughput vs streams", section)], notes),
               plots, say)
    return 0
