"""Provisional against final events, end to end, over separate runs: `python benchmarks/e2e_provisional.py --help`."""

import sys

from crab_bench.e2e_provisional import main

if __name__ == "__main__":
    sys.exit(main())
