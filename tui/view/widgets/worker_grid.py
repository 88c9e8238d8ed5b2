"""Provides WorkerGrid: a WorkerCard per worker, drawn a group of cards at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from rich.text import Text
from textual.containers import Grid
from textual.widget import Widget
from textual.widgets import Static

from tui.model.state import WorkerState
from tui.view.widgets.worker_card import WorkerCard

CARD_PARTS = 4
"""Worker cards are shown in at most this many groups, each drawn in a frame of its own."""


class WorkerGrid(Grid):
    """The cards in the order their workers first appeared; ``-many`` past four cards, ``-selected`` on one.

    ``-crowded`` where two-line rows would not all fit: then a line a worker.

    A worker missing from what ``show`` is given loses its card (a dead one folded into a line below).
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.cards: dict[str, WorkerCard] = {}
        self.empty_hint: Text | None = None
        """What the grid says while no worker shows (how to get one), in place of the cards; None: nothing."""
        self._hint: Static | None = None

    def show(
        self, workers: Mapping[str, WorkerState], now: float, selected: Callable[[], str | None], *, details: bool
    ) -> Iterator[None]:
        """Show each worker on its card, mounting new ones and removing those not given; yields before each group.

        ``selected`` is asked per card: a key may change the selection between two groups.
        With ``details=False`` one group, and the cards without their task and log lines.
        """
        items = list(workers.items())
        for name in [name for name in self.cards if name not in workers]:
            self.cards.pop(name).remove()
        self._show_hint(not items)
        per_part = max(1, -(-len(items) // CARD_PARTS)) if details else max(1, len(items))
        for index, (name, worker) in enumerate(items):
            if index % per_part == 0:
                yield
                if not self.app.is_running:
                    return  # the app began shutting down while this part waited: its widgets are going
            card = self.cards.get(name)
            if card is None:
                card = self.cards[name] = WorkerCard(name)
                self.mount(card)
            card.mark_selected(name == selected())
            if card.is_mounted:
                card.show(worker, now, details=details)
        for name in [name for name in self.cards if name not in workers]:
            self.cards.pop(name).remove()  # a replay stepped back to before this worker came
        self.set_class(len(self.cards) > 4, "-many")
        self.set_class(self._crowded(len(self.cards)), "-crowded")

    def _crowded(self, count: int) -> bool:
        """Whether two-line rows for ``count`` workers would not all fit the grid's greatest height (a class).

        Then a worker takes one line (app.tcss): at 80x24 thirteen of a class show instead of six.
        """
        parent = self.parent
        if count <= 4 or not isinstance(parent, Widget):
            return False
        limit = self.styles.max_height  # a share of the column (app.tcss), resolved against it as the layout does
        room = parent.size.height if limit is None else int(limit.resolve(parent.size, self.app.size))
        columns = self.styles.grid_size_columns or 1
        return room > 0 and -(-count // columns) * 2 > room

    def _show_hint(self, empty: bool) -> None:
        """The empty grid's hint while no card shows; gone with the first card (a toast covered them for 30 s)."""
        if empty and self._hint is None and self.empty_hint is not None:
            self._hint = Static(self.empty_hint, id="no-workers")
            self.mount(self._hint)
        elif not empty and self._hint is not None:
            self._hint.remove()
            self._hint = None

    def mark_selected(self, selected: str | None) -> None:
        """Mark the selected card at once, without waiting for (or doing) a full refresh (WorkerCard.mark_selected)."""
        for name, card in self.cards.items():
            card.mark_selected(name == selected)
