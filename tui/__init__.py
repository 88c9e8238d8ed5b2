"""dispatch-lab: the Textual dashboard."""

import os

# Textual sends a screen update at most once a frame (a paused 1/60 s interval timer): a key pressed
# just after an update waited up to 17 ms for its own. At 120 a frame is 8 ms: the key-latency p95 with
# 8 workers draining went 72 -> 62 ms (medians of 4 alternating runs, each pair better), the dashboard lag
# unchanged (0.31 vs 0.32 s); updates come when something changed, so a frame rate cap is seldom reached.
# Read by textual.constants when Textual is first imported: set here, before any tui module imports it.
os.environ.setdefault("TEXTUAL_FPS", "120")
