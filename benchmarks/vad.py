"""Silero VAD cost per 32 ms frame: `python benchmarks/vad.py --help`."""

import sys

from crab_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["vad", *sys.argv[1:]]))
