"""End-of-speech-to-event latency of the whole pipeline on a long recording: `python benchmarks/e2e.py --help` (same as `crab-rt bench e2e`)."""

import sys

from crab_rt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "e2e", *sys.argv[1:]]))
