"""Provides TimelineView: the workers' lanes under their cards."""

from __future__ import annotations

from textual.widgets import Static

from tui import timeline
from tui.state import Model


class TimelineView(Static):
    """One lane per worker: green = done, yellow = redelivered, red ✗ = killed, dots = idle."""

    def show(self, model: Model, now: float) -> None:
        self.border_title = "timeline · done · ↻ redelivered · ✗ killed · ··· idle"
        width = max(20, self.size.width - 2)
        self.update(timeline.render(model, now, width))
