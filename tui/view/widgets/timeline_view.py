"""Provides TimelineView: the workers' lanes under their cards, the whole session or the latest run alone."""

from __future__ import annotations

from textual.widgets import Static

from tui.model.state import Model
from tui.view import timeline

LEGEND = "timeline · done · ↻ redelivered · ✗ killed · ··· idle"


class TimelineView(Static):
    """One lane per worker: green = done, yellow = redelivered, red ✗ = killed, dots = idle; ▏ a run begins."""

    def on_mount(self) -> None:
        self.run_only = False
        """Show the latest run alone (Ctrl+T) instead of the whole session."""
        self.border_title = LEGEND
        self._drawn: tuple[object, ...] = ()
        self._lanes = -1

    def toggle_run_only(self) -> bool:
        """Switch between the latest run alone and the whole session; True when it now shows the run."""
        self.run_only = not self.run_only
        self._drawn = ()
        return self.run_only

    def show(self, model: Model, now: float) -> None:
        """Redraw when a cell's worth of time has passed or a lane changed, not on every tick."""
        width = max(20, self.size.width - 2)
        run = model.runs.latest if self.run_only else None
        start, end = timeline.window(model, now, run)
        cell = (end - start) / max(1, width - 5)
        lanes = tuple(
            (name, len(w.lane), w.lane[-1].end if w.lane else None, w.alive) for name, w in model.workers.items()
        )
        runs = (len(model.runs.all), model.runs.latest.finished if model.runs.latest else None)
        key = (width, int(end / cell) if cell > 0 else 0, lanes, runs, run is not None)
        if key == self._drawn:
            return
        if run is not None:
            self.border_title = f"timeline · {run.title} alone · ^T whole session"
        else:
            self.border_title = LEGEND + (" · ^T latest run alone" if model.runs.all else "")
        layout = len(lanes) != self._lanes or key[3:] != self._drawn[3:]  # a lane or the marks row: a height
        self._drawn, self._lanes = key, len(lanes)
        self.update(timeline.render(model, now, width, run=run), layout=layout)
