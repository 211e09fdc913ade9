"""End-of-speech-to-event latency of the whole pipeline on a long recording: `python benchmarks/e2e.py --help`."""

import sys

from crab_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["e2e", *sys.argv[1:]]))
