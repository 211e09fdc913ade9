"""`python -m crab_rt.cli`: the same as the `crab-rt` command."""

import sys

from crab_rt.cli import main

sys.exit(main())
