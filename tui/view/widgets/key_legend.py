"""Provides KeyLegend: the keys the footer shows, wrapped onto as many lines as the width needs."""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual.geometry import Size
from textual.screen import Screen
from textual.widget import Widget


class KeyLegend(Widget):
    """Every shown binding as ``key description``, never cut: where Textual's one-line footer runs out of width.

    An entry never breaks across lines; a disabled key is dimmed, as the footer dims it.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._entries: tuple[tuple[str, str, bool], ...] = ()

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self._bindings_changed(self.screen)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen: Screen[object]) -> None:
        entries = tuple(
            (self.app.get_key_display(binding), binding.description or "palette", enabled)
            for key, (_, binding, enabled, _) in screen.active_bindings.items()
            if binding.show or key == self.app.COMMAND_PALETTE_BINDING
        )
        if entries != self._entries:
            self._entries = entries
            self.refresh(layout=True)

    def _lines(self, width: int) -> list[Text]:
        lines: list[Text] = [Text()]
        for key, description, enabled in self._entries:
            entry = Text.assemble((key, "bold"), " ", (description, ""), style="" if enabled else "dim")
            needed = cell_len(entry.plain) + (2 if lines[-1].plain else 0)
            if lines[-1].plain and cell_len(lines[-1].plain) + needed > width:
                lines.append(Text())
            if lines[-1].plain:
                lines[-1].append("  ")
            lines[-1].append_text(entry)
        return lines

    def render(self) -> Text:
        return Text("\n").join(self._lines(self.size.width))

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._lines(width))
