"""A long stream with resident memory sampled: `python benchmarks/soak.py --help`."""

import sys

from crab_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["soak", *sys.argv[1:]]))
