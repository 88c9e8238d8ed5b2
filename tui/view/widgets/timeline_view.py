"""Provides TimelineView: the workers' lanes under their cards, the whole session or the latest run alone."""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.widgets import Static

from tui.model.state import Model
from tui.text import printable
from tui.view import timeline

LEGEND = "timeline · done · ↻ redelivered · ✗ killed · ··· idle"


class TimelineView(Static):
    """One lane per worker: green = done, yellow = redelivered, red ✗ = killed, dots = idle; ▏ a run begins."""

    folded: frozenset[str] = frozenset()
    """Workers whose cards are folded away: they share one lane, so dozens of killed workers never push the
    live ones off screen (set by the main view before ``show``)."""

    def on_mount(self) -> None:
        self.run_only = False
        """Show the latest run alone (Ctrl+T) instead of the whole session."""
        self.border_title = LEGEND
        self._drawn: tuple[object, ...] = ()
        self._lanes = -1
        self._shown: tuple[Model, float] | None = None

    def on_resize(self, event: events.Resize) -> None:
        # A show before the first layout drew at the 20-cell minimum; a replay standing still draws nothing
        # more, so the lanes would keep that width (labels such as ↻ cut) until the next move.
        if self._shown is not None:
            self.show(*self._shown)

    def toggle_run_only(self) -> bool:
        """Switch between the latest run alone and the whole session; True when it now shows the run."""
        self.run_only = not self.run_only
        self._drawn = ()
        return self.run_only

    def show(self, model: Model, now: float) -> None:
        """Redraw when a cell's worth of time has passed or a lane changed, not on every tick."""
        self._shown = (model, now)
        folded = self.folded
        width = max(20, self.size.width - 2)
        run = model.runs.latest if self.run_only else None
        start, end = timeline.window(model, now, run)
        cell = (end - start) / max(1, width - 5)
        lanes = tuple(
            (name, len(w.lane), w.lane[-1].end if w.lane else None, w.alive) for name, w in model.workers.items()
        )
        runs = (len(model.runs.all), model.runs.latest.finished if model.runs.latest else None)
        key = (width, int(end / cell) if cell > 0 else 0, lanes, folded, runs, run is not None)
        if key == self._drawn:
            return
        if run is not None:  # a scenario's title comes from a file: text, never markup
            self.border_title = Text(f"timeline · {printable(run.title)} alone · ^T whole session")
        else:
            self.border_title = LEGEND + (" · ^T latest run alone" if model.runs.all else "")
        count = len(lanes) - len(folded) + (1 if folded else 0)
        # A lane, the folded lane or the marks row appearing changes the height; anything else only repaints.
        layout = count != self._lanes or key[4:] != self._drawn[4:]
        self._drawn, self._lanes = key, count
        self.update(timeline.render(model, now, width, run=run, folded=folded), layout=layout)
