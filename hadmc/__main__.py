"""`python -m hadmc`: the same command line as the `hadmc` script."""

import sys

from hadmc.cli import main

sys.exit(main())
