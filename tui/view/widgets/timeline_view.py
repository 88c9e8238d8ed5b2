"""Provides TimelineView: the workers' lanes under their cards."""

from __future__ import annotations

from textual.widgets import Static

from tui.model.state import Model
from tui.view import timeline


class TimelineView(Static):
    """One lane per worker: green = done, yellow = redelivered, red ✗ = killed, dots = idle."""

    def on_mount(self) -> None:
        self.border_title = "timeline · done · ↻ redelivered · ✗ killed · ··· idle"
        self._drawn: tuple[object, ...] = ()
        self._lanes = -1

    folded: frozenset[str] = frozenset()
    """Workers whose cards are folded away: they share one lane, so dozens of killed workers never push the
    live ones off screen (set by the main view before ``show``)."""

    def show(self, model: Model, now: float) -> None:
        """Redraw when a cell's worth of time has passed or a lane changed, not on every tick."""
        folded = self.folded
        width = max(20, self.size.width - 2)
        start, end = timeline.window(model, now)
        cell = (end - start) / max(1, width - 5)
        lanes = tuple(
            (name, len(w.lane), w.lane[-1].end if w.lane else None, w.alive) for name, w in model.workers.items()
        )
        key = (width, int(end / cell) if cell > 0 else 0, lanes, folded)
        if key == self._drawn:
            return
        count = len(lanes) - len(folded) + (1 if folded else 0)
        layout = count != self._lanes  # one line per lane: only a new lane changes the height
        self._drawn, self._lanes = key, count
        self.update(timeline.render(model, now, width, folded=folded), layout=layout)
