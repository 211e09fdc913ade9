"""Latency and throughput vs the number of streams sharing one pipeline: `python benchmarks/concurrency.py --help`."""

import sys

from crab_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["concurrency", *sys.argv[1:]]))
