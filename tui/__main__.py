"""Provides ``python -m tui``, the same as the ``dispatch-lab`` command."""

import sys

from tui.cli import main

sys.exit(main())
