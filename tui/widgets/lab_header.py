"""Provides LabHeader: broker (password masked), queue, mode in words, and the broker link's state."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.state import Model
from workers.settings import DispatchMode


class LabHeader(Static):
    """One line at the top that says what is being shown."""

    def show(self, model: Model, broker: str, durable: bool, now: float, title: str = "dispatch-lab") -> None:
        mode: DispatchMode = model.mode
        text = Text.assemble(
            ("" if title == "dispatch-lab" else f"{title} ", "bold"),
            (f"{broker} ", "dim"),
            ("queue ", "dim"),
            (f"{model.queue_name}", "bold"),
            (" (durable) " if durable else " (transient) ", "dim"),
            (mode.describe(), "bold cyan"),
        )
        state = model.broker_state
        if title != "dispatch-lab":
            text.append("  read-only", "bold yellow")
        elif state == "connected":
            text.append("  ● broker connected", "green")
        elif state == "connecting":
            text.append("  ○ connecting…", "yellow")
        else:
            attempt = f", attempt {model.broker_attempt}" if model.broker_attempt else ""
            text.append(f"  ● broker {state}{attempt} ({now - model.broker_since:.0f}s)", "bold red")
        self.set_class(state not in ("connected", "connecting"), "-trouble")
        self.update(text)
