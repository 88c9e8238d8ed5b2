"""Provides MainView: the dashboard's main screen, its widgets, and drawing the model on them a part at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical

from tui.engine.backend import LabConfig
from tui.model.scenarios import Scenario
from tui.model.state import Model
from tui.view.widgets.lab_header import LabHeader
from tui.view.widgets.publisher import PublisherPane
from tui.view.widgets.queue_panel import QueuePanel
from tui.view.widgets.run_summary import RunSummary
from tui.view.widgets.timeline_view import TimelineView
from tui.view.widgets.worker_grid import WorkerGrid
from workers.settings import mask_url


class MainView:
    """The header, queue panel, worker cards, timeline and publisher, and which worker is selected.

    Kept by the app, not a screen of its own: the view loop draws it whichever screen is on top.
    """

    def __init__(
        self, config: LabConfig, model: Model, presets: dict[str, Scenario], *, recorded: bool = False
    ) -> None:
        self.config = config
        self.model = model
        self.header = LabHeader(id="header")
        self.queue_panel = QueuePanel(id="queue")
        self.queue_panel.recorded = recorded
        self.grid = WorkerGrid(id="workers")
        self.timeline = TimelineView(id="timeline")
        self.run_summary = RunSummary(id="run-summary")
        self.publisher = PublisherPane(presets)
        self.selected: str | None = None
        """The worker keys aimed at one worker act on; the first card to appear is selected."""

    def compose(self) -> ComposeResult:
        yield self.header
        with Horizontal(id="main"):
            yield self.queue_panel
            with Vertical(id="right"):
                yield self.grid
                yield self.run_summary
                yield self.timeline
        yield self.publisher

    def parts(self, now: float, title: str, running: Callable[[], bool], *, details: bool = True) -> Iterator[None]:
        """Show the model; yields between parts (the queue figures, groups of cards, the timeline).

        With ``details=False`` the figures only: no timeline, lifelines, or the cards' task and log lines.
        """
        if not self.header.is_attached:
            return  # shutting down
        model, config = self.model, self.config
        self.header.show(model, mask_url(config.url), config.durable, now, title, private=config.private_broker)
        self.queue_panel.show(model, now, config.durable, details=details)
        self.publisher.show(model, now)
        self.run_summary.show(model, now)
        yield from self.grid.show(model.workers, now, self._selection, details=details)
        if details:
            yield
            if running():
                self.timeline.show(model, now)

    def _selection(self) -> str | None:
        if self.selected is None and self.grid.cards:
            self.selected = next(iter(self.grid.cards))
        return self.selected

    def select(self, name: str | None) -> None:
        """Select a worker and mark its card at once, without waiting for (or doing) a full refresh."""
        self.selected = name
        self.grid.mark_selected(name)

    def step(self, step: int) -> None:
        """Select the next (or previous) worker, in the order they appeared."""
        names = list(self.model.workers)
        if names:
            index = names.index(self.selected) if self.selected in names else -step
            self.select(names[(index + step) % len(names)])
