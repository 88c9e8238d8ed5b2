"""Provides MainView: the dashboard's main screen, its widgets, and drawing the model on them a part at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from tui.engine.backend import LabConfig
from tui.model import departures
from tui.model.scenarios import Scenario
from tui.model.state import Model
from tui.text import printable
from tui.view.widgets.key_legend import KeyLegend
from tui.view.widgets.lab_header import LabHeader
from tui.view.widgets.publisher import PublisherPane
from tui.view.widgets.queue_panel import QueuePanel
from tui.view.widgets.run_summary import RunSummary
from tui.view.widgets.timeline_view import TimelineView
from tui.view.widgets.worker_grid import WorkerGrid
from workers.settings import mask_url

MIN_WIDTH, MIN_HEIGHT = 70, 20
"""The smallest terminal the main screen works in (the app's breakpoints); below it, TOO_SMALL says so."""
TOO_SMALL = f"enlarge the terminal to at least {MIN_WIDTH}×{MIN_HEIGHT}"


class MainView:
    """The header, queue panel, worker cards, timeline and publisher, and which worker is selected.

    Kept by the app, not a screen of its own: the view loop draws it whichever screen is on top.
    """

    def __init__(
        self, config: LabConfig, model: Model, presets: dict[str, Scenario], *, recorded: bool = False
    ) -> None:
        self.config = config
        self.model = model
        self.recorded = recorded
        """A replay: the figures say they were recorded, and every worker shows as it ended (no folding)."""
        self.header = LabHeader(id="header")
        self.queue_panel = QueuePanel(id="queue")
        self.queue_panel.recorded = recorded
        self.grid = WorkerGrid(id="workers")
        self.departed = Static(id="departed", markup=False)
        """The dead workers folded into one line once their cards have shown the kill for a while."""
        self.timeline = TimelineView(id="timeline")
        self.run_summary = RunSummary(id="run-summary")
        self.publisher = PublisherPane(presets)
        self._departed: tuple[object, ...] = ()
        self.keys = KeyLegend(id="keys")
        """The keys on as many lines as they need, where Textual's footer (one line) would cut them."""
        self.selected: str | None = None
        """The worker keys aimed at one worker act on; the first card to appear is selected."""

    def compose(self) -> ComposeResult:
        yield Static(TOO_SMALL, id="too-small", markup=False)
        yield self.header
        with Horizontal(id="main"):
            yield self.queue_panel
            with Vertical(id="right"):
                yield self.grid
                yield self.departed
                yield self.run_summary
                # The timeline (and what joins it under the cards) takes the rest of the column;
                # on a short screen it is the first to give way (app.tcss).
                yield self.timeline
        yield self.publisher
        yield self.keys

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
        # A replay (read-only) shows every worker as it ended; folding follows a live clock.
        shown, folded = departures.fold(model, now) if not self.recorded else (list(model.workers), [])
        if self.selected is not None and self.selected not in shown:
            self.selected = None  # its card folded away: the keys aim at the first card again
        self._show_departed(folded)
        yield from self.grid.show({name: model.workers[name] for name in shown}, now, self._selection, details=details)
        if details:
            yield
            if running():
                self.timeline.folded = frozenset(folded)
                self.timeline.show(model, now)

    def _show_departed(self, folded: list[str]) -> None:
        """The folded workers' line; read from the ledger again only when a figure it depends on moved."""
        ledger = self.model.ledger
        key = (tuple(folded), ledger.published, ledger.redeliveries, ledger.lost, ledger.purged) if folded else ()
        if key == self._departed:
            return
        self._departed = key
        self.departed.set_class(bool(folded), "-shown")
        line = departures.departures(self.model, folded).describe() if folded else ""
        self.departed.update(Text(printable(line)))  # a layout: the line may wrap onto a second

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
        names = list(self.grid.cards)  # a folded worker has no card to select
        if names:
            index = names.index(self.selected) if self.selected in names else -step
            name = names[(index + step) % len(names)]
            self.select(name)
            # A class's rows scroll: the selected one comes into view. Only when it is out of it: a
            # key's time under a flood is the figure key_latency_8 holds to 50 ms.
            card, grid = self.grid.cards[name], self.grid
            if not card.region or not grid.region.contains_region(card.region):
                card.scroll_visible(animate=False, immediate=True)
