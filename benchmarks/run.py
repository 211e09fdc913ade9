"""Any benchmark kind: `python benchmarks/run.py models|e2e|concurrency|asr|vad ...`."""

import sys

from crab_bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
