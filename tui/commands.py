"""Provides the command palette entries for the dashboard's actions and presets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from textual.app import SystemCommand

from tui.text import for_toast
from tui.widgets.publisher import PublisherPane
from workers.settings import ACK_MODES, DispatchMode

if TYPE_CHECKING:
    from tui.app import DispatchLab


def lab_commands(app: DispatchLab) -> Iterator[SystemCommand]:
    """Every action of the footer and more, searchable by words."""
    yield SystemCommand("Add worker", "Start one more worker process", app.action_add_worker)
    yield SystemCommand("Kill selected worker", "SIGKILL, like a crash", app.action_kill)
    yield SystemCommand("Stop selected worker", "Finish the current task, then exit", app.action_stop)
    yield SystemCommand("Restart selected worker", "Stop it and start it again", app.action_restart)
    yield SystemCommand("Set prefetch…", "Any number; 0 = unlimited", app.action_set_prefetch)
    for prefetch, words in ((0, "round-robin"), (1, "fair dispatch")):
        yield SystemCommand(
            f"Prefetch {prefetch} ({words})", "For all workers, live",
            lambda p=prefetch: app.set_mode(DispatchMode(p, app.mode.ack)),
        )  # fmt: skip
    for ack in ACK_MODES:
        yield SystemCommand(
            f"Ack mode {ack}", "For all workers, live",
            lambda a=ack: app.set_mode(DispatchMode(app.mode.prefetch, a)),
        )  # fmt: skip
    yield SystemCommand("Purge queue", "Remove the ready messages", app.action_purge)
    if app.node is not None:
        yield SystemCommand("Restart broker", "Stop and start the private node", app.action_restart_broker)
    for name, scenario in app.presets.items():
        yield SystemCommand(
            f"Publish preset: {name}", scenario.description,
            lambda s=scenario: app.post_message(PublisherPane.PublishTasks(list(s.tasks), for_toast(s.name), s)),
        )  # fmt: skip
    yield SystemCommand(
        "Compare modes (F12)", "Run a scenario under several prefetch values on fresh queues, side by side",
        app.action_compare,
    )  # fmt: skip
    yield SystemCommand("Messages", "The ledger: every task's lifeline, lost ids, duplicates", app.action_messages)
    yield SystemCommand("Save session", "Events (JSON lines), ledger (CSV) and an SVG screenshot", app.action_save)
    yield SystemCommand("Help", "What each mode does and what to watch for", app.action_help)
