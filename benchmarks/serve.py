"""`crab-rt serve` under load, N real-time WebSocket clients on loopback: `python benchmarks/serve.py --help`."""

import sys

from crab_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
