"""Provides the command palette entries for the dashboard's actions and presets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from textual.app import SystemCommand
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.message import Message

from tui.view.actions import LabActions
from tui.view.widgets.publisher import PublisherPane, preset_key
from workers.settings import ACK_MODES, FAIL_MODES, DispatchMode


class LabView(Protocol):
    """The app's own part of the palette: its screens, saving, and the publisher pane's request."""

    selected: str | None

    def action_help(self) -> None: ...

    def action_messages(self) -> None: ...

    def action_save(self) -> None: ...

    def post_message(self, message: Message) -> bool: ...


def lab_commands(app: LabView, actions: LabActions) -> Iterator[SystemCommand]:
    """Every action of the footer and more, searchable by words."""
    yield SystemCommand("Add worker", "Start one more worker process", actions.add_worker)
    yield SystemCommand("Kill selected worker", "SIGKILL, like a crash", lambda: actions.kill(app.selected))
    yield SystemCommand(
        "Stop selected worker", "Finish the current task, then exit", lambda: actions.stop(app.selected)
    )
    yield SystemCommand("Restart selected worker", "Stop it and start it again", lambda: actions.restart(app.selected))
    yield SystemCommand("Set prefetch…", "Any number; 0 = unlimited", actions.set_prefetch)
    for prefetch, words in ((0, "round-robin"), (1, "fair dispatch")):
        yield SystemCommand(
            f"Prefetch {prefetch} ({words})", "For all workers, live",
            lambda p=prefetch: actions.set_mode(DispatchMode(p, actions.mode.ack)),
        )  # fmt: skip
    for ack in ACK_MODES:
        yield SystemCommand(
            f"Ack mode {ack}", "For all workers, live",
            lambda a=ack: actions.set_mode(DispatchMode(actions.mode.prefetch, a)),
        )  # fmt: skip
    for on_fail in FAIL_MODES:
        yield SystemCommand(
            f"On failure: {on_fail}", f"{on_fail.words}: {on_fail.help[0]} (Ctrl+F cycles; for all workers, live)",
            lambda f=on_fail: actions.set_fail_mode(f),
        )  # fmt: skip
    yield SystemCommand(
        "Move dead letters back (Ctrl+R)", "Every message in <queue>.dead back to the work queue, for another try",
        actions.move_dead_letters_back,
    )  # fmt: skip
    yield SystemCommand("Purge queue", "Remove the ready messages", actions.purge)
    if actions.can_restart_broker:
        yield SystemCommand("Restart broker", "Stop and start the private node", actions.restart_broker)
    yield SystemCommand(
        "Compare modes (F12)", "Run a scenario under several prefetch values on fresh queues, side by side",
        actions.compare,
    )  # fmt: skip
    yield SystemCommand("Messages", "The ledger: every task's lifeline, lost ids, duplicates", app.action_messages)
    yield SystemCommand("Save session", "Events (JSON lines), ledger (CSV) and an SVG screenshot", app.action_save)
    yield SystemCommand("Help", "What each mode does and what to watch for", app.action_help)


PRESET_SCORE = 1_000_000.0
"""Added to a preset's match score, so a preset that matches comes before any other command: Textual's fuzzy
matcher scores a few points a matching letter (``t`` gives Theme 6, tutorial 6, burst 3), so typing the first
letter of "tutorial" listed Theme, Quit and Screenshot before the presets."""


class PresetCommands(Provider):
    """The presets in the command palette, by name and key, ranked above every other command that matches."""

    def _presets(self) -> list[tuple[str, str, str]]:
        """(title, help, name) for each preset of the screen's publisher pane (none on another screen)."""
        found: list[tuple[str, str, str]] = []
        for pane in self.screen.query(PublisherPane):
            for index, (name, scenario) in enumerate(pane.presets.items()):
                key = preset_key(index)
                found.append((f"Publish preset: {name}", f"{scenario.description}{f' ({key})' if key else ''}", name))
        return found

    def _send(self, name: str) -> None:
        for pane in self.screen.query(PublisherPane):
            pane.send_preset(name)

    async def discover(self) -> Hits:
        for title, help_text, name in self._presets():
            yield DiscoveryHit(title, lambda n=name: self._send(n), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, name in self._presets():
            # The name alone first ("tutor" finds tutorial at once), then the whole title ("preset").
            score = matcher.match(name) or matcher.match(title)
            if score > 0:
                yield Hit(PRESET_SCORE + score, matcher.highlight(title), lambda n=name: self._send(n), help=help_text)
