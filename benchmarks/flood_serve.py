"""`crab-rt serve` under connection floods beside a healthy client: `python benchmarks/flood_serve.py --help`."""

import sys

from crab_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["flood-serve", *sys.argv[1:]]))
