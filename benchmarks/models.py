"""Encoder and head latency vs length and batch, per backend: `python benchmarks/models.py --help` (same as `crab-rt bench models`)."""

import sys

from crab_rt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "models", *sys.argv[1:]]))
