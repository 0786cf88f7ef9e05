"""python -m tgllava.eval: the `tgllava eval` command without the main CLI."""

import sys

from .cli import main

sys.exit(main())
