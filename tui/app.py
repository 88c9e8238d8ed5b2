"""Provides DispatchLab, the Textual app: composition, bindings and the refresh timer."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterable
from typing import Any

from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from tui.backend import Backend, LabConfig
from tui.export import session_folder, write_ledger_csv
from tui.runner import apply_action, check, settled
from tui.scenarios import Action, Scenario, builtin
from tui.session_log import SessionLog
from tui.state import Model
from tui.widgets.help_screen import HelpScreen
from tui.widgets.lab_header import LabHeader
from tui.widgets.messages_screen import MessagesScreen
from tui.widgets.mode_dialog import PrefetchDialog
from tui.widgets.publisher import PublisherPane
from tui.widgets.queue_panel import QueuePanel
from tui.widgets.timeline_view import TimelineView
from tui.widgets.worker_card import WorkerCard
from workers.settings import ACK_MODES, DispatchMode, mask_url

PREFETCH_CYCLE = (0, 1, 10)
REFRESH_SECONDS = 1 / 8


class DispatchLab(App[int]):
    """The dashboard. With no backend it only shows its model (replays, snapshots)."""

    CSS_PATH = "app.tcss"
    TITLE = "dispatch-lab"
    BINDINGS = [
        Binding("f1", "help", "Help", priority=True),
        Binding("f2", "add_worker", "Add worker", priority=True),
        Binding("f3", "kill", "Kill", priority=True),
        Binding("f4", "stop", "Stop", priority=True),
        Binding("f5", "restart", "Restart", priority=True),
        Binding("f6", "cycle_prefetch", "Prefetch", priority=True),
        Binding("f7", "cycle_ack", "Ack mode", priority=True),
        Binding("f8", "purge", "Purge", priority=True),
        Binding("f9", "messages", "Messages", priority=True),
        Binding("ctrl+s", "save", "Save", priority=True),
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
        self.selected: str | None = None
        self._cards: dict[str, WorkerCard] = {}

    def compose(self) -> ComposeResult:
        yield LabHeader(id="header")
        with Horizontal(id="main"):
            yield QueuePanel(id="queue")
            with Vertical(id="right"):
                yield Grid(id="workers")
                yield TimelineView(id="timeline")
        yield PublisherPane(self.presets)
        yield Footer()

    def on_mount(self) -> None:
        if self.backend is not None:
            self.backend.start()
        self.refresh_view()
        self.set_interval(REFRESH_SECONDS, self.refresh_view)

    # ----- the one timer: fold what arrived, then render

    def refresh_view(self) -> None:
        if self.backend is not None:
            items = self.backend.inbox.drain()
            if self.session_log is not None:
                self.session_log.add(items)
            self.model.apply_all(items)
        now = self.clock()
        self.query_one(LabHeader).show(self.model, mask_url(self.config.url), self.config.durable, now, self.title)
        self.query_one(QueuePanel).show(self.model, now, self.config.durable)
        grid = self.query_one("#workers", Grid)
        for name, worker in self.model.workers.items():
            card = self._cards.get(name)
            if card is None:
                card = self._cards[name] = WorkerCard(name)
                grid.mount(card)
                if self.selected is None:
                    self.selected = name
            card.set_class(name == self.selected, "-selected")
            if card.is_mounted:
                card.show(worker, now)
        grid.set_class(len(self._cards) > 4, "-many")
        self.query_one(TimelineView).show(self.model, now)

    def on_worker_card_selected(self, message: WorkerCard.Selected) -> None:
        self.selected = message.name
        self.refresh_view()

    def on_publisher_pane_publish_tasks(self, message: PublisherPane.PublishTasks) -> None:
        if self.backend is None:
            self.notify("Read-only view: nothing to publish to.", severity="warning")
            return
        self.backend.publish(message.bodies)
        self.notify(f"Publishing {message.label} ({len(message.bodies)} tasks)", timeout=3)
        if message.scenario is not None and message.scenario.actions:
            self.run_scenario_actions(message.scenario)

    def run_scenario_actions(self, scenario: Scenario) -> None:
        """A scenario's timed actions, as the headless runner does them."""
        assert self.backend is not None
        backend = self.backend
        for action in scenario.actions:

            def act(action: Action = action) -> None:
                apply_action(action, backend.pool, self.set_mode)
                self.notify(f"{scenario.name}: {action.describe()}", timeout=3)

            self.set_timer(action.at, act)
        if scenario.expect:
            last = max(a.at for a in scenario.actions) + 1.0
            self.set_timer(last, lambda: self.run_worker(self._check_when_settled(scenario), group="checks"))

    async def _check_when_settled(self, scenario: Scenario) -> None:
        for _ in range(1200):
            if settled(self.model):
                break
            await asyncio.sleep(0.5)
        results = check(scenario, self.model)
        failed = [c for c in results if not c.ok]
        lines = "\n".join(("✓ " if c.ok else "✗ ") + c.describe() for c in results)
        self.notify(lines, title=f"{scenario.name}: {'as expected' if not failed else 'NOT as expected'}",
                    severity="error" if failed else "information", timeout=15)  # fmt: skip

    # ----- actions

    def _selected_worker(self) -> str | None:
        if self.selected in self.model.workers:
            return self.selected
        self.notify("No worker selected: click a card or press Ctrl+N.", severity="warning")
        return None

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_select(self, step: int) -> None:
        names = list(self.model.workers)
        if not names:
            return
        index = names.index(self.selected) if self.selected in names else -step
        self.selected = names[(index + step) % len(names)]
        self.refresh_view()

    def action_add_worker(self) -> None:
        if self.backend is None:
            return
        if len(self.backend.pool.running()) >= self.backend.pool.MAX_WORKERS:
            self.notify(f"At most {self.backend.pool.MAX_WORKERS} workers.", severity="warning")
            return
        name = self.backend.pool.spawn()
        self.notify(f"Starting worker {name}", timeout=2)

    def action_kill(self) -> None:
        name = self._selected_worker()
        if name is None or self.backend is None:
            return
        held = self.model.workers[name].in_hand
        if not self.backend.pool.kill(name):
            self.notify(f"{name} is not running.", severity="warning")
            return
        fate = "lost (auto ack)" if self.model.workers[name].ack == "auto" else "requeued by the broker"
        self.notify(f"Killed {name} with SIGKILL: {held} task(s) it held will be {fate}.")

    def action_stop(self) -> None:
        name = self._selected_worker()
        if name is not None and self.backend is not None and not self.backend.pool.stop(name):
            self.notify(f"{name} is not running.", severity="warning")

    def action_restart(self) -> None:
        name = self._selected_worker()
        if name is None or self.backend is None:
            return
        pool = self.backend.pool
        if name in pool.running():
            pool.stop(name)
            self.run_worker(self._respawn_when_gone(name), name=f"restart-{name}", group=f"restart-{name}")
        else:
            pool.spawn(name)
        self.notify(f"Restarting {name}", timeout=2)

    async def _respawn_when_gone(self, name: str) -> None:
        assert self.backend is not None
        pool = self.backend.pool
        for _ in range(600):
            if name not in pool.running():
                pool.spawn(name)
                return
            await asyncio.sleep(0.1)
        self.notify(f"{name} is still finishing its task; kill it (F3) to restart now.", severity="warning")

    def set_mode(self, mode: DispatchMode) -> None:
        if self.backend is None:
            return
        self.backend.set_mode(mode)
        self.notify(f"Mode for all workers: {mode.describe()}", timeout=4)

    def action_cycle_prefetch(self) -> None:
        current = self.model.mode
        following = [p for p in PREFETCH_CYCLE if p > current.prefetch]
        self.set_mode(DispatchMode(following[0] if following else PREFETCH_CYCLE[0], current.ack))

    def action_cycle_ack(self) -> None:
        current = self.model.mode
        ack = ACK_MODES[(ACK_MODES.index(current.ack) + 1) % len(ACK_MODES)]
        self.set_mode(DispatchMode(current.prefetch, ack))

    def action_set_prefetch(self) -> None:
        def chosen(prefetch: int | None) -> None:
            if prefetch is not None:
                self.set_mode(DispatchMode(prefetch, self.model.mode.ack))

        self.push_screen(PrefetchDialog(self.model.mode.prefetch), chosen)

    def action_messages(self) -> None:
        self.push_screen(MessagesScreen(self.model, self.clock))

    def action_save(self) -> None:
        """Save the event log, the ledger and a screenshot into runs/session-…/."""
        folder = session_folder()
        self.save_screenshot(filename="screen.svg", path=str(folder))
        rows = write_ledger_csv(self.model.ledger, folder / "ledger.csv")
        if self.session_log is not None:
            self.session_log.flush()
            shutil.copyfile(self.session_log.path, folder / "events.jsonl")
        self.notify(f"Saved {rows} ledger rows, events and a screenshot to {folder}", timeout=6)

    def action_purge(self) -> None:
        if self.backend is not None:
            self.backend.purge()
            self.notify("Purging the queue's ready messages", timeout=2)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Add worker", "Start one more worker process", self.action_add_worker)
        yield SystemCommand("Kill selected worker", "SIGKILL, like a crash", self.action_kill)
        yield SystemCommand("Stop selected worker", "Finish the current task, then exit", self.action_stop)
        yield SystemCommand("Restart selected worker", "Stop it and start it again", self.action_restart)
        yield SystemCommand("Set prefetch…", "Any number; 0 = unlimited", self.action_set_prefetch)
        for prefetch, words in ((0, "round-robin"), (1, "fair dispatch")):
            yield SystemCommand(
                f"Prefetch {prefetch} ({words})", "For all workers, live",
                lambda p=prefetch: self.set_mode(DispatchMode(p, self.model.mode.ack)),
            )  # fmt: skip
        for ack in ACK_MODES:
            yield SystemCommand(
                f"Ack mode {ack}", "For all workers, live",
                lambda a=ack: self.set_mode(DispatchMode(self.model.mode.prefetch, a)),
            )  # fmt: skip
        yield SystemCommand("Purge queue", "Remove the ready messages", self.action_purge)
        for name, scenario in self.presets.items():
            yield SystemCommand(
                f"Publish preset: {name}", scenario.description,
                lambda s=scenario: self.post_message(PublisherPane.PublishTasks(list(s.tasks), s.name, s)),
            )  # fmt: skip
        yield SystemCommand("Messages", "The ledger: every task's lifeline, lost ids, duplicates", self.action_messages)
        yield SystemCommand("Save session", "Events (JSON lines), ledger (CSV) and an SVG screenshot", self.action_save)
        yield SystemCommand("Help", "What each mode does and what to watch for", self.action_help)
