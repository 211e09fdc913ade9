"""Linear probes on a checkpoint's pooled speech features: `python benchmarks/speech_probe.py --help`."""

import sys

from crab_bench.speech_probe import main

if __name__ == "__main__":
    sys.exit(main())
