"""`python benchmarks/concurrency.py`: N streams at once through one Pipeline; latency and throughput vs N.

Each stream replays its own synthetic conversation (a different seed, so
utterance ends do not all coincide), fed at real time by default.
"""

from __future__ import annotations

import argparse
import dataclasses

from crab_bench.common import add_list_option, check_range, finish_run, resolve_threads, start_run
from crab_bench.e2e import PipelineBenchConfig, add_pipeline_arguments

__all__ = ["CONFIG", "ConcurrencyBenchConfig", "add_arguments", "run"]


@dataclasses.dataclass(frozen=True)
class ConcurrencyBenchConfig(PipelineBenchConfig):
    """Options of `concurrency` (and of PipelineBenchConfig, CommonBenchConfig).

    Attributes:
        duration_s: length of each stream's synthetic conversation, seconds.
        streams: stream counts to run, one level each (1 to 256).
    """

    duration_s: float = 30.0
    streams: tuple[int, ...] = (1, 2, 4, 8)

    def validate(self) -> None:
        super().validate()
        check_range("--streams", self.streams, 1, 256)


CONFIG = ConcurrencyBenchConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_pipeline_arguments(p, ConcurrencyBenchConfig)
    add_list_option(p, "--streams", ConcurrencyBenchConfig, "streams", "stream counts", int)


def run(config: ConcurrencyBenchConfig) -> int:
    """N streams through one Pipeline per level; writes concurrency_<preset>[_tag].json, .md and PNGs."""
    from crab_bench.machine import cpu_seconds
    from crab_bench.replay import conversation_audio, latency_table, make_pipeline, replay, warm_up
    from crab_bench.report import line_panels, markdown_table

    config.validate()
    counts = list(config.streams)
    say = print if not config.quiet else (lambda *a, **k: None)
    threads = resolve_threads(config.threads)
    ctx = start_run(config, threads)
    audios = [conversation_audio(config.duration_s, config.seed + i, config.voice)[0] for i in range(max(counts))]
    pipeline, info = make_pipeline(config, threads, say)
    levels = []
    try:
        warm_up(pipeline)
        for n in counts:
            cpu0 = cpu_seconds()
            out = replay(pipeline, audios[:n], config.realtime, config.chunk_ms)
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
    payload = {"kind": "concurrency", **info, "realtime": config.realtime, "chunk_ms": config.chunk_ms,
               "threads": threads, "input": f"synthetic conversations of about {config.duration_s:g} s, seeds "
                                            f"{config.seed}..{config.seed + max(counts) - 1}", "levels": levels}
    rows = [[lv["streams"], lv["utterances"], lv["latency_ms"]["end_to_event"].get("p50"),
             lv["latency_ms"]["end_to_event"].get("p95"), lv["latency_ms"]["queue_wait"].get("p50"),
             lv["latency_ms"]["overhead"].get("p50"), lv["utterances_per_s"], lv["audio_s_per_wall_s"], lv["dropped"]]
            for lv in levels]
    pace = "at real time" if config.realtime else "as fast as possible"
    notes = [f"model: preset {config.preset}, {info['backend']}; ONNX Runtime idle spinning "
             f"{'on' if config.ort_spinning else 'off'}", f"ASR: {info['asr']}",
             f"input: {payload['input']}, one per stream, fed {pace}",
             "one Pipeline shared by all streams (utterances ready together are batched)"]
    section = markdown_table(["streams", "utterances", "end_to_event p50 ms", "p95 ms", "queue_wait p50 ms",
                              "overhead p50 ms", "utterances/s", "audio s / wall s", "dropped"], rows)

    def plots(stem):
        from pathlib import Path

        from crab_bench.e2e import plots as stage_bars

        xs = [lv["streams"] for lv in levels]
        path = Path(f"{stem}_vs_streams.png")
        line_panels(path, f"preset {config.preset}: N streams through one pipeline", [
            {"title": "end-of-speech to event", "xlabel": "streams", "ylabel": "ms", "series": {
                "p50": (xs, [lv["latency_ms"]["end_to_event"].get("p50") for lv in levels]),
                "p95": (xs, [lv["latency_ms"]["end_to_event"].get("p95") for lv in levels])}},
            {"title": "throughput", "xlabel": "streams", "ylabel": "per wall second", "series": {
                "utterances/s": (xs, [lv["utterances_per_s"] for lv in levels]),
                "audio s / wall s": (xs, [lv["audio_s_per_wall_s"] for lv in levels])}},
        ])
        return [path, *stage_bars(stem, levels, [f"{n} streams" for n in xs])]

    finish_run(ctx, f"concurrency_{config.preset}", payload,
               (f"Concurrency, preset {config.preset}", [("Latency and throughput vs streams", section)], notes),
               plots, say)
    return 0
