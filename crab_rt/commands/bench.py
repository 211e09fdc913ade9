"""`crab-rt bench <kind>`: latency benchmarks (models, e2e, concurrency, asr, vad); see benchmarks/README.md."""

from __future__ import annotations

import argparse

KINDS = {
    "models": ("crab_rt.bench.models", "encoders and head: latency vs audio/text length and batch, per backend"),
    "e2e": ("crab_rt.bench.e2e", "replay a long recording through the whole pipeline; end-of-speech-to-event latency"),
    "concurrency": ("crab_rt.bench.concurrency", "N streams through one pipeline: latency and throughput vs N"),
    "asr": ("crab_rt.bench.asr", "faster-whisper latency per utterance vs length, per model and compute type"),
    "vad": ("crab_rt.bench.vad", "Silero VAD (and the segmenter) cost per 32 ms frame"),
}


def register(sub: argparse._SubParsersAction) -> None:
    import importlib

    p = sub.add_parser("bench", help="latency benchmarks: models, e2e, concurrency, asr, vad",
                       description="Latency benchmarks; results go to benchmarks/results/<machine>/ as JSON, "
                                   "Markdown and PNG.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, (module, help_text) in KINDS.items():
        kp = kinds.add_parser(kind, help=help_text, description=help_text)
        # The kind modules import numpy and the project only; heavy libraries load inside run().
        importlib.import_module(module).add_arguments(kp)
        kp.set_defaults(func=run, bench_module=module)


def run(args: argparse.Namespace) -> int:
    import importlib

    return importlib.import_module(args.bench_module).run(args)
