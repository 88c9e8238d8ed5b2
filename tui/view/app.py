"""Provides DispatchLab, the Textual app: composition, bindings, and handing keys and messages on."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from textual import events
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer

from tui.engine.backend import Backend, LabConfig
from tui.engine.pacing import Pacer
from tui.engine.session_log import SessionLog
from tui.model.scenarios import Scenario, builtin
from tui.model.state import Model
from tui.view.actions import LabActions
from tui.view.commands import lab_commands
from tui.view.main_view import MainView
from tui.view.screen_updates import call_after_each_screen_update
from tui.view.widgets.help_screen import HelpScreen
from tui.view.widgets.messages_screen import MessagesScreen
from tui.view.widgets.publisher import PublisherPane
from tui.view.widgets.worker_card import WorkerCard


class DispatchLab(App[int]):
    """The dashboard. With no backend it only shows its model (replays, snapshots)."""

    CSS_PATH = "app.tcss"
    TITLE = "dispatch-lab"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    """Below 100 columns the queue panel gives its width to the worker cards."""
    BINDINGS = [
        Binding("f1", "help", "Help", priority=True),
        Binding("f2", "add_worker", "+Worker", priority=True),
        Binding("f3", "kill", "Kill", priority=True),
        Binding("f4", "stop", "Stop", priority=True),
        Binding("f5", "restart", "Restart", priority=True),
        Binding("f6", "cycle_prefetch", "Prefetch", priority=True),
        Binding("f7", "cycle_ack", "Ack", priority=True),
        Binding("f8", "purge", "Purge", priority=True),
        Binding("f9", "messages", "Msgs", priority=True),
        Binding("f10", "restart_broker", "Broker↻", priority=True),
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("ctrl+f", "cycle_fail_mode", "On fail", show=False, priority=True),
        Binding("ctrl+r", "move_dead_letters_back", "Dead letters back", show=False, priority=True),
        Binding("f12", "compare", "Compare", show=False, priority=True),
        Binding("ctrl+n", "select(1)", "Next worker", show=False, priority=True),
        Binding("ctrl+b", "select(-1)", "Previous worker", show=False, priority=True),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(
        self,
        config: LabConfig,
        model: Model,
        backend: Backend | None = None,
        *,
        clock: Callable[[], float] = time.time,
        presets: dict[str, Scenario] | None = None,
        log: SessionLog | None = None,
        title: str | None = None,
    ) -> None:
        super().__init__()
        if title:
            self.title = title
        self.config = config
        self.model = model
        self.backend = backend
        self.clock = clock
        self.presets = builtin() if presets is None else presets
        self.session_log = log
        self.view = MainView(config, model, self.presets)
        self.actions = LabActions(self, config, model, backend, self.presets, log)
        """What the keys and the palette do; each binding below hands on to it."""
        self.pacer = Pacer(
            backend.inbox if backend is not None else None,
            model.apply_all,
            lambda details: self.view.parts(self.clock(), self.title, lambda: self.is_running, details=details),
            record=log.add if log is not None else None,
        )
        call_after_each_screen_update(self, self.pacer.screen_updated)

    def compose(self) -> ComposeResult:
        yield from self.view.compose()
        yield Footer()

    def on_mount(self) -> None:
        if self.backend is not None:
            self.backend.start()
        self.refresh_view()
        self.run_worker(self.pacer.run(), name="view", group="view")

    async def on_event(self, event: events.Event) -> None:
        await super().on_event(event)
        if isinstance(event, events.Key):
            # Priority bindings have run by now; a forwarded key is handled before the screen is idle.
            self.pacer.key_pressed()

    def refresh_view(self) -> None:
        """Fold everything that arrived and redraw now."""
        self.pacer.fold_all()
        for _ in self.view.parts(self.clock(), self.title, lambda: self.is_running):
            pass

    @property
    def selected(self) -> str | None:
        return self.view.selected

    @selected.setter
    def selected(self, name: str | None) -> None:
        self.view.selected = name

    def show_selection(self) -> None:
        self.view.select(self.view.selected)

    def on_worker_card_selected(self, message: WorkerCard.Selected) -> None:
        self.view.select(message.name)

    def on_publisher_pane_publish_tasks(self, message: PublisherPane.PublishTasks) -> None:
        self.actions.publish(message)

    def action_select(self, step: int) -> None:
        self.view.step(step)

    # ----- the keys: each hands on to the actions, or opens a screen of the view

    def action_add_worker(self) -> None:
        self.actions.add_worker()

    def action_kill(self) -> None:
        self.actions.kill(self.selected)

    def action_stop(self) -> None:
        self.actions.stop(self.selected)

    def action_restart(self) -> None:
        self.actions.restart(self.selected)

    def action_cycle_prefetch(self) -> None:
        self.actions.cycle_prefetch()

    def action_cycle_ack(self) -> None:
        self.actions.cycle_ack()

    def action_cycle_fail_mode(self) -> None:
        self.actions.cycle_fail_mode()

    def action_move_dead_letters_back(self) -> None:
        self.actions.move_dead_letters_back()

    def action_purge(self) -> None:
        self.actions.purge()

    def action_restart_broker(self) -> None:
        self.actions.restart_broker()

    def action_compare(self) -> None:
        self.actions.compare()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.actions.can_restart_broker if action == "restart_broker" else True

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_messages(self) -> None:
        self.push_screen(MessagesScreen(self.model, self.clock))

    def action_save(self) -> None:
        self.actions.save()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield from lab_commands(self, self.actions)
