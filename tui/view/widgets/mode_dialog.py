"""Provides PrefetchDialog: set prefetch to any number."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from workers.settings import MAX_PREFETCH


class PrefetchDialog(ModalScreen[int | None]):
    """Ask for a prefetch count (0 = unlimited)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: int) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Prefetch for all workers (0 = unlimited, 1 = fair, up to {MAX_PREFETCH}):")
            yield Input(str(self.current), restrict=r"[0-9]*", max_length=5, id="prefetch-input")
            yield Label("", id="dialog-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        if not text.isdigit() or not 0 <= int(text) <= MAX_PREFETCH:
            self.query_one("#dialog-error", Label).update(f"A whole number from 0 to {MAX_PREFETCH}, please.")
            return
        self.dismiss(int(text))

    def action_cancel(self) -> None:
        self.dismiss(None)
