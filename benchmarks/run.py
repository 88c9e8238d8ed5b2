"""Runs the benchmarks: ``python benchmarks/run.py [--quick] [--smoke] [--json]``.

See docs/benchmarks.md for what each figure measures and the latest full run.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # Run as a script, so the repository root (workers/, benchmarks/) is not on the path yet.
    sys.path.insert(0, str(ROOT))

from benchmarks.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
