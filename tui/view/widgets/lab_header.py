"""Provides LabHeader: the broker link's state (a block too), broker (password masked), queue, and the mode in words."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.model.state import Model
from tui.text import for_toast, printable
from tui.view.widgets.queue_panel import queue_kind

REASON_CELLS = 40
"""Characters of the broker's block reason the header shows (RabbitMQ's are ``low on memory``, ``low on disk``)."""


PRIVATE = "private broker (removed on exit) · "
"""Said of a node this dashboard started: what F10 restarts, and what Ctrl+Q takes away."""


class LabHeader(Static):
    """One line at the top that says what is being shown; the link's state comes first so it is never cut off.

    Names and the broker come from outside (a replayed log holds anything): Text, with control characters escaped.
    """

    _shown: tuple[object, ...] = ()

    def show(
        self,
        model: Model,
        broker: str,
        durable: bool,
        now: float,
        title: str = "dispatch-lab",
        *,
        private: bool = False,
    ) -> None:
        """``private``: the broker is a node this dashboard started (F10 restarts it; it goes when we exit)."""
        state = model.broker_state
        blocked = model.publish_blocked
        live = title == "dispatch-lab"
        text = Text()
        if not live:
            text.append(f"{printable(title)} (read-only) ", "bold yellow")
        if blocked is not None:
            # Connected, yet nothing we publish gets in: said first, in the broker's words.
            text.append("● blocked by the broker: ", "bold red")
            text.append(for_toast(blocked, REASON_CELLS), "bold red")
            text.append(f" ({now - model.publish_blocked_since:.0f}s) ", "bold red")
        if not live and state not in ("connected", "connecting"):
            attempt = f", attempt {model.broker_attempt}" if model.broker_attempt else ""
            text.append(f"● recorded: broker {printable(state)}{attempt} ", "bold yellow")
        if not live or (state == "connected" and blocked is not None):
            pass  # a replay shows no live link; a blocked one needs no "connected" beside it
        elif state == "connected":
            text.append("● connected ", "bold green")
        elif state == "connecting":
            text.append("○ connecting… ", "bold yellow")
        else:
            attempt = f", attempt {model.broker_attempt}" if model.broker_attempt else ""
            text.append(f"● broker {printable(state)}{attempt} ({now - model.broker_since:.0f}s) ", "bold red")
        if private:  # before the mode: at 80 columns the end of the line is cut
            text.append(PRIVATE, "bold magenta")
        text.append(model.mode.describe(), "bold cyan")
        text.append(" · queue ", "dim")
        text.append(printable(model.queue_name), "bold")
        text.append(f" ({queue_kind(model, durable)}) ", "dim")  # a quorum queue said "(durable)"
        text.append(printable(broker), "dim")
        self.set_class((live and state not in ("connected", "connecting")) or blocked is not None, "-trouble")
        shown = (text.plain, tuple(text.spans))  # Text's own == ignores styles
        if shown != self._shown:  # a repaint only when it reads differently; one line high, so never a layout
            self._shown = shown
            self.update(text, layout=False)
