"""Training throughput in 1 and several data-parallel processes: `python benchmarks/train_scaling.py --help`."""

import sys

from crab_bench.train_scaling import main

if __name__ == "__main__":
    sys.exit(main())
