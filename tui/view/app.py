"""Provides DispatchLab, the Textual app: composition, bindings, and handing keys and messages on."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from textual import events
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input

from tui.engine.backend import Backend, LabConfig
from tui.engine.pacing import Pacer
from tui.engine.replay import Replay
from tui.engine.session_log import SessionLog
from tui.model.scenarios import Scenario, builtin
from tui.model.state import Model
from tui.view.actions import LabActions
from tui.view.commands import PresetCommands, lab_commands
from tui.view.main_view import MIN_HEIGHT, MIN_WIDTH, MainView
from tui.view.replay_control import ACTIONS as REPLAY_ACTIONS
from tui.view.replay_control import BINDINGS as REPLAY_BINDINGS
from tui.view.replay_control import ReplayControl
from tui.view.screen_updates import call_after_each_screen_update
from tui.view.widgets.help_screen import HelpScreen
from tui.view.widgets.messages_screen import MessagesScreen
from tui.view.widgets.publisher import PRESET_KEYS, PublisherPane, preset_binding_keys
from tui.view.widgets.worker_card import WorkerCard


class DispatchLab(App[int]):
    """The dashboard. With no backend it only shows its model (replays, snapshots)."""

    CSS_PATH = "app.tcss"
    TITLE = "dispatch-lab"
    HORIZONTAL_BREAKPOINTS = [
        (0, "-too-narrow"), (MIN_WIDTH, "-narrow"), (100, "-medium"), (120, "-wide"), (160, "-huge"),
    ]  # fmt: skip
    """Below 120 columns workers are compact rows and the keys wrap onto a legend; app.tcss says what each changes."""
    VERTICAL_BREAKPOINTS = [(0, "-too-short"), (MIN_HEIGHT, "-short"), (30, "-tall")]
    """Below 30 rows workers are compact rows and the publisher one line high; below the minimum, a notice."""
    BINDINGS = [
        *REPLAY_BINDINGS,
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
        Binding("ctrl+t", "timeline_run", "Run only", show=False, priority=True),
        Binding("ctrl+q", "quit", "Quit", priority=True),
        # The presets' keys, shown on their buttons; priority, so they work while the task input has focus.
        *(Binding(preset_binding_keys(index), f"preset({index})", f"Preset {index + 1}", show=False, priority=True)
          for index in range(len(PRESET_KEYS))),
    ]  # fmt: skip
    COMMANDS = App.COMMANDS | {PresetCommands}
    """The presets come first in the palette: typing part of a name finds them before Textual's own commands."""

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
        replay: Replay | None = None,
    ) -> None:
        super().__init__()
        if title:
            self.title = title
        self.config = config
        self.model = model
        self.backend = backend
        self.clock = clock if replay is None else lambda: replay.now
        """The view's time: the moment a replay stands at, or now."""
        self.presets = builtin() if presets is None else presets
        self.session_log = log
        self.view = MainView(config, model, self.presets, recorded=replay is not None)
        self.replay = (
            None
            if replay is None
            else ReplayControl(replay, self.refresh_view, self.set_interval, self.call_after_refresh)
        )
        self.actions = LabActions(self, config, model, backend, self.presets, log)
        """What the keys and the palette do; each binding below hands on to it."""
        self.pacer = Pacer(
            backend.inbox if backend is not None else None,
            model.apply_all,
            self._draw,
            record=log.add if log is not None else None,
        )
        call_after_each_screen_update(self, self.pacer.screen_updated)

    def compose(self) -> ComposeResult:
        yield from self.view.compose()
        yield Footer()

    def on_mount(self) -> None:
        if self.backend is not None:
            self.backend.start()
        self.actions.started(self.view.grid)
        if self.replay is not None:
            for box in self.query(Input):  # a replay publishes nothing, and a focused box would take space , .
                box.disabled = True
            self.replay.start()
        self.refresh_view()
        self.run_worker(self.pacer.run(), name="view", group="view")

    def post_message(self, message: Message) -> bool:
        queued = super().post_message(message)
        if queued and isinstance(message, events.Key):
            self.pacer.key_posted()  # the terminal's keys come this way, in the app's thread
        return queued

    async def on_event(self, event: events.Event) -> None:
        if not isinstance(event, events.Key):
            await super().on_event(event)
            return
        self.pacer.key_arrived()
        try:
            await super().on_event(event)  # priority bindings run here; a forwarded key before the screen is idle
        finally:
            self.pacer.key_handled()

    def refresh_view(self) -> None:
        """Fold everything that arrived and redraw now."""
        self.pacer.fold_all()
        for _ in self.view.parts(self.clock(), self.header_title(), lambda: self.is_running):
            pass

    def _draw(self, details: bool) -> Iterator[None]:
        """The view's parts, drawn a part at a time by the pacer; in a replay, none after it moved."""
        moves = self.replay.moves if self.replay is not None else 0
        for _ in self.view.parts(self.clock(), self.header_title(), lambda: self.is_running, details=details):
            yield
            if self.replay is not None and self.replay.moves != moves:
                return  # the rest would show the moment it began at (refresh_view drew the new one whole)

    def header_title(self) -> str:
        """What the header names first: a replay says where it stands in time."""
        return self.title if self.replay is None else self.replay.describe()

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

    def action_preset(self, index: int) -> None:
        names = list(self.presets)
        if 0 <= index < len(names):
            self.view.publisher.send_preset(names[index])

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
        if action in REPLAY_ACTIONS:  # a replay's, on its main screen: elsewhere the keys are the widgets'
            return self.replay is not None and len(self.screen_stack) == 1
        return self.actions.can_restart_broker if action == "restart_broker" else True

    def action_timeline_run(self) -> None:
        """Ctrl+T: the timeline shows the latest run alone, or the whole session again."""
        if not self.model.runs.all:
            self.notify("No run yet: a preset button publishes one.", severity="warning", timeout=3, markup=False)
            return
        self.view.timeline.toggle_run_only()
        self.refresh_view()

    # ----- a replay's keys: move through time

    def action_replay_step(self, direction: int) -> None:
        if self.replay is not None:
            self.replay.step(direction)

    def action_replay_event(self, direction: int) -> None:
        if self.replay is not None:
            self.replay.event(direction)

    def action_replay_edge(self, direction: int) -> None:
        if self.replay is not None:
            self.replay.edge(direction)

    def action_replay_play(self) -> None:
        if self.replay is not None:
            self.replay.toggle_play()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_messages(self) -> None:
        self.push_screen(MessagesScreen(self.model, self.clock))

    def action_save(self) -> None:
        self.actions.save()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield from lab_commands(self, self.actions)
