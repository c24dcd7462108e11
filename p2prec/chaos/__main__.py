"""``python -m p2prec.chaos ACTION``: the same as ``p2prec chaos ACTION``."""

import sys

from p2prec.chaos.cli import main

sys.exit(main())
