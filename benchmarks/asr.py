"""faster-whisper latency per utterance: `python benchmarks/asr.py --help` (same as `crab-rt bench asr`)."""

import sys

from crab_rt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "asr", *sys.argv[1:]]))
