"""Provides the command palette entries for the dashboard's actions and presets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from textual.app import SystemCommand
from textual.message import Message

from tui.text import for_toast
from tui.view.actions import LabActions
from tui.view.widgets.publisher import PublisherPane
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
    for name, scenario in actions.presets.items():
        yield SystemCommand(
            f"Publish preset: {name}", scenario.description,
            lambda s=scenario: app.post_message(PublisherPane.PublishTasks(list(s.tasks), for_toast(s.name), s)),
        )  # fmt: skip
    yield SystemCommand(
        "Compare modes (F12)", "Run a scenario under several prefetch values on fresh queues, side by side",
        actions.compare,
    )  # fmt: skip
    yield SystemCommand("Messages", "The ledger: every task's lifeline, lost ids, duplicates", app.action_messages)
    yield SystemCommand("Save session", "Events (JSON lines), ledger (CSV) and an SVG screenshot", app.action_save)
    yield SystemCommand("Help", "What each mode does and what to watch for", app.action_help)
