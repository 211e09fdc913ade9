"""The models bench in N separate processes, medians and spread: `python benchmarks/models_repeat.py --help`."""

import sys

from crab_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["models-repeat", *sys.argv[1:]]))
