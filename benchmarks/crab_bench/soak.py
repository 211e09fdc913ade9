"""`python benchmarks/soak.py`: a long stream through one Pipeline, faster than real time, with RSS sampled.

The question is whether anything grows with the length of a run: buffers,
queues, latency statistics, the event queue. A synthetic conversation of a few
minutes is made once and fed over and over (the stream itself never ends
between rounds, so its VAD state, segmenter and counters run the whole time)
until `--duration-s` of audio went in. The resident memory of the process is
read from /proc every `--sample-every-s` seconds of audio. Reports the RSS
series, its growth over the second half of the run (after warm-up
allocations), events and drops.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import ClassVar

from crab_bench.common import check_range, finish_run, resolve_threads, start_run
from crab_bench.e2e import PipelineBenchConfig, add_pipeline_arguments
from crab_rt.cli._options import add_config_option

__all__ = ["CONFIG", "SoakBenchConfig", "add_arguments", "run", "GROWTH_LIMIT_MB"]

# Flat means: RSS grows by less than this over the second half of the run.
GROWTH_LIMIT_MB = 20.0


@dataclasses.dataclass(frozen=True)
class SoakBenchConfig(PipelineBenchConfig):
    """Options of `soak` (and of PipelineBenchConfig, CommonBenchConfig).

    Attributes:
        duration_s: audio fed in total, seconds (a short conversation repeated).
        realtime: as fast as possible by default (a soak at real time takes the run's length).
        preset: tiny by default, so an hour of audio takes minutes on a small CPU.
        loop_s: length of the conversation that is repeated, seconds.
        sample_every_s: audio seconds between two RSS samples.
    """

    duration_s: float = 3600.0
    realtime: bool = False
    preset: str = "tiny"
    loop_s: float = 300.0
    sample_every_s: float = 60.0

    MAX_DURATION_S: ClassVar[float] = 86_400.0

    def validate(self) -> None:
        super().validate()
        check_range("--loop-s", self.loop_s, 10, 3600)
        check_range("--sample-every-s", self.sample_every_s, 1, self.duration_s)


CONFIG = SoakBenchConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_pipeline_arguments(p, SoakBenchConfig)
    add_config_option(p, "--loop-s", SoakBenchConfig, "loop_s", "length of the repeated conversation in seconds")
    add_config_option(p, "--sample-every-s", SoakBenchConfig, "sample_every_s",
                      "audio seconds between two RSS samples")


def rss_mb() -> float:
    """Current resident memory of this process, MiB (/proc/self/statm; 0.0 where there is no /proc)."""
    import os

    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def run(config: SoakBenchConfig) -> int:
    """Feed `duration_s` of audio through one stream; writes soak_<preset>[_tag].json, .md and the RSS PNG."""
    from crab_bench.machine import cpu_seconds
    from crab_bench.replay import conversation_audio, make_pipeline, warm_up
    from crab_rt.audio import SAMPLE_RATE

    config.validate()
    say = print if not config.quiet else (lambda *a, **k: None)
    threads = resolve_threads(config.threads)
    ctx = start_run(config, threads)
    loop, source = conversation_audio(config.loop_s, config.seed, config.voice)
    pipeline, info = make_pipeline(config, threads, say)
    chunk = max(1, int(round(config.chunk_ms * SAMPLE_RATE / 1000)))
    total = int(round(config.duration_s * SAMPLE_RATE))
    every = int(round(config.sample_every_s * SAMPLE_RATE))
    events = 0

    def count(_event) -> None:
        nonlocal events
        events += 1

    samples: list[dict] = []
    try:
        warm_up(pipeline)
        say(f"soak: {config.duration_s:g} s of {source} repeated ({loop.size / SAMPLE_RATE:.0f} s per round), "
            f"{'real time' if config.realtime else 'as fast as possible'}; {info['backend']}; ASR: {info['asr']}")
        stream = pipeline.create_stream("soak", on_event=count)
        cpu0, start = cpu_seconds(), time.perf_counter()
        samples.append({"audio_s": 0.0, "rss_mb": rss_mb(), "events": 0, "wall_s": 0.0})
        fed = 0
        next_sample = every
        while fed < total:
            offset = fed % loop.size
            piece = loop[offset : offset + min(chunk, total - fed)]
            stream.accept(piece)
            fed += piece.size
            if config.realtime:
                delay = start + fed / SAMPLE_RATE - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            if fed >= next_sample or fed >= total:
                next_sample += every
                samples.append({"audio_s": round(fed / SAMPLE_RATE, 1), "rss_mb": rss_mb(), "events": events,
                                "wall_s": round(time.perf_counter() - start, 1)})
                say(f"  {samples[-1]['audio_s']:8.0f} s audio  RSS {samples[-1]['rss_mb']:7.1f} MB  "
                    f"events {events}")
        stream.flush()
        stream.wait()
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
        dropped, dropped_events = stream.dropped_utterances, stream.dropped_events
        latency_count = pipeline.latencies.count
    finally:
        pipeline.close()
    half = [s["rss_mb"] for s in samples if s["audio_s"] >= config.duration_s / 2]
    growth = round(half[-1] - half[0], 1) if len(half) >= 2 else None
    payload = {
        "kind": "soak", **info, "input": source, "loop_s": round(loop.size / SAMPLE_RATE, 1),
        "realtime": config.realtime, "chunk_ms": config.chunk_ms, "threads": threads,
        "audio_s": round(fed / SAMPLE_RATE, 1), "wall_s": round(wall, 1),
        "real_time_factor": round(wall / (fed / SAMPLE_RATE), 4), "cpu_s": round(cpu, 1),
        "events": events, "latency_records": latency_count, "dropped_utterances": dropped,
        "dropped_events": dropped_events, "rss_samples": samples,
        "rss_mb": {"start": samples[0]["rss_mb"], "end": samples[-1]["rss_mb"],
                   "max": max(s["rss_mb"] for s in samples), "growth_second_half": growth},
        "target": {"what": f"RSS growth over the second half < {GROWTH_LIMIT_MB:g} MB, zero drops",
                   "met": growth is not None and growth < GROWTH_LIMIT_MB and dropped == 0},
    }
    say(f"  {payload['audio_s']:g} s audio in {payload['wall_s']:g} s; {events} events, dropped {dropped}; RSS "
        f"{payload['rss_mb']['start']} -> {payload['rss_mb']['end']} MB (max {payload['rss_mb']['max']}, "
        f"second half {growth:+} MB)")
    finish_run(ctx, f"soak_{config.preset}", payload, markdown(payload), lambda stem: plots(stem, payload), say)
    return 0


def markdown(p: dict) -> tuple[str, list, list]:
    from crab_bench.report import markdown_table

    rows = [[s["audio_s"], s["wall_s"], s["rss_mb"], s["events"]] for s in p["rss_samples"]]
    met = "met" if p["target"]["met"] else "missed"
    notes = [
        f"model: preset {p['preset']} ({p['bundle']['speech_encoder']} + {p['bundle']['text_encoder']}, "
        f"random weights), {p['backend']}; ASR: {p['asr']}",
        f"input: {p['input']}, {p['loop_s']} s repeated to {p['audio_s']} s in one stream, fed "
        f"{'at real time' if p['realtime'] else 'as fast as possible'} in {p['chunk_ms']:g} ms chunks",
        f"{p['events']} events, dropped utterances {p['dropped_utterances']}, dropped events {p['dropped_events']}; "
        f"wall {p['wall_s']} s (real-time factor {p['real_time_factor']}), CPU {p['cpu_s']} s",
        f"RSS {p['rss_mb']['start']} MB at the start, {p['rss_mb']['end']} MB at the end, max {p['rss_mb']['max']} MB; "
        f"growth over the second half {p['rss_mb']['growth_second_half']} MB",
        f"target: {p['target']['what']}: **{met}**",
    ]
    table = markdown_table(["audio s", "wall s", "RSS MB", "events"], rows)
    return "Soak: one long stream", [("Resident memory while streaming", table)], notes


def plots(stem, p: dict) -> list:
    from pathlib import Path

    from crab_bench.report import line_panels

    xs = [s["audio_s"] / 60 for s in p["rss_samples"]]
    panel = {"title": "resident memory", "xlabel": "audio fed (min)", "ylabel": "RSS (MB)",
             "series": {"RSS": (xs, [s["rss_mb"] for s in p["rss_samples"]])}}
    return [line_panels(Path(f"{stem}_rss.png"), f"Soak, preset {p['preset']}", [panel])]
