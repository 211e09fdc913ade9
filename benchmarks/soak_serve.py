"""`crab-rt serve` for an hour with N real-time clients: `python benchmarks/soak_serve.py --help`."""

import sys

from crab_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["soak-serve", *sys.argv[1:]]))
