"""Latency and throughput vs the number of streams sharing one pipeline: `python benchmarks/concurrency.py --help` (same as `crab-rt bench concurrency`)."""

import sys

from crab_rt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "concurrency", *sys.argv[1:]]))
