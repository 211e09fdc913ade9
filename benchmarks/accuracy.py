"""Crab, its ablations and the classical SER baselines over corpus seeds: `python benchmarks/accuracy.py --help`."""

import sys

from crab_bench.accuracy import main

if __name__ == "__main__":
    sys.exit(main())
