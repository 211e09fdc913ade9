"""faster-whisper latency per utterance: `python benchmarks/asr.py --help`."""

import sys

from crab_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["asr", *sys.argv[1:]]))
