"""``python -m lrpilot``: the ``lrpilot`` command line."""

import sys

from lrpilot.cli import main

sys.exit(main())
