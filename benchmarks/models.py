"""Encoder and head latency vs length and batch, per backend: `python benchmarks/models.py --help`."""

import sys

from crab_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["models", *sys.argv[1:]]))
