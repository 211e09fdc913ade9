"""Silero VAD cost per 32 ms frame: `python benchmarks/vad.py --help` (same as `crab-rt bench vad`)."""

import sys

from crab_rt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "vad", *sys.argv[1:]]))
