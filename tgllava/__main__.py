"""`python -m tgllava ...`: the `tgllava` command line (tgllava.cli), for when the console script is not on PATH."""

import sys

from .cli import main

sys.exit(main())
