import sys

from crab_rt.cli import main

sys.exit(main())
