"""``python -m dance_analysis.reproduce``: see :mod:`dance_analysis.reproduce`."""

import sys

from . import main

sys.exit(main())
