"""Protocol fuzzing of `crab-rt serve`, 20,000 generated connections: `python benchmarks/fuzz_serve.py --help`."""

import sys

from crab_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["fuzz-serve", *sys.argv[1:]]))
