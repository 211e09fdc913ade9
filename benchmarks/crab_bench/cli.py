"""The benchmark command line: `python benchmarks/<kind>.py ...` (or `python benchmarks/run.py KIND ...`).

The benchmarks live in the source tree, not in the crab-rt wheel; run them from
a checkout with the dev install (`make install`). User errors (`CrabError`)
are one line on stderr and exit code 2, as in `crab-rt`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from crab_rt.cli._options import config_from_args
from crab_rt.errors import CrabError

if TYPE_CHECKING:
    from crab_bench.common import CommonBenchConfig

__all__ = ["KINDS", "build_parser", "build_config", "main"]

KINDS = {
    "models": ("crab_bench.models", "encoders and head: latency vs audio/text length and batch, per backend"),
    "models-repeat": ("crab_bench.models_repeat", "the models bench in N separate processes: medians and min-max "
                      "of every point and ratio"),
    "e2e": ("crab_bench.e2e", "replay a long recording through the whole pipeline; end-of-speech-to-event latency"),
    "concurrency": ("crab_bench.concurrency", "N streams through one pipeline: latency and throughput vs N"),
    "asr": ("crab_bench.asr", "faster-whisper latency per utterance vs length, per model and compute type"),
    "vad": ("crab_bench.vad", "Silero VAD (and the segmenter) cost per 32 ms frame"),
    "soak": ("crab_bench.soak", "a long stream (an hour of audio by default), faster than real time: RSS and drops"),
    "serve": ("crab_bench.serve_load", "crab-rt serve under load: N real-time WebSocket clients of real speech on "
              "loopback; end-of-speech-to-event latency as the client sees it, CPU, refusals"),
    "flood-serve": ("crab_bench.serve_flood", "crab-rt serve under connection floods (TCP, slowloris, silent "
                    "WebSockets) beside one healthy real-time client: its latency, the server's file descriptors"),
    "fuzz-serve": ("crab_bench.serve_fuzz", "protocol fuzzing of crab-rt serve: 20,000 generated connections against "
                   "the documented errors and close codes, beside a healthy client; RSS, server exceptions"),
    "soak-serve": ("crab_bench.serve_soak", "crab-rt serve for an hour with N real-time clients: RSS, file "
                   "descriptors, threads and latency per window, events lost"),
}


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per benchmark kind."""
    p = argparse.ArgumentParser(prog="benchmarks/run.py",
                                description="Latency benchmarks; results go to benchmarks/results/<machine>/ as "
                                            "JSON, Markdown and PNG.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, (module, help_text) in KINDS.items():
        kp = kinds.add_parser(kind, help=help_text, description=help_text, prog=f"benchmarks/{kind}.py")
        # The kind modules import numpy and the project only; heavy libraries load inside run().
        importlib.import_module(module).add_arguments(kp)
        kp.set_defaults(bench_module=module)
    return p


def build_config(args: argparse.Namespace) -> CommonBenchConfig:
    """The parsed kind's config (its module's CONFIG class): the fields' defaults, replaced by the flags given.

    Raises:
        ConfigError: a list flag that does not parse (e.g. `--audio-s 1,x`).
    """
    return config_from_args(importlib.import_module(args.bench_module).CONFIG, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run one benchmark kind, and turn user errors into one line and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        config = build_config(args)
        # crab-rt's own progress at INFO; other libraries (faster-whisper logs every utterance) at WARNING.
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("crab_rt").setLevel(logging.WARNING if config.quiet else logging.INFO)
        return int(importlib.import_module(args.bench_module).run(config) or 0)
    except CrabError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
