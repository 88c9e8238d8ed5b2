"""Provides LabActions: what the dashboard's keys and commands do to workers, modes, scenarios and the broker.

DispatchLab (tui/app.py) builds on it; this half holds no widgets, only requests
to the backend, so the app module stays composition and refresh.
"""

from __future__ import annotations

import asyncio
import time

from textual import work
from textual.app import App

from tui.backend import Backend, LabConfig
from tui.observations import BrokerRestarted
from tui.runner import RunResult, apply_action, check, settled
from tui.scenarios import Action, Scenario
from tui.state import Model
from tui.text import ERROR_CHARS, for_toast, printable
from tui.widgets.compare_screen import CompareScreen
from tui.widgets.help_screen import HelpScreen
from tui.widgets.mode_dialog import PrefetchDialog
from workers.local_node import LocalNode, LocalNodeError
from workers.settings import ACK_MODES, DispatchMode

PREFETCH_CYCLE = (0, 1, 10)


class LabActions(App[int]):
    """Actions on the lab; every one is a non-blocking request to the backend."""

    config: LabConfig
    model: Model
    backend: Backend | None
    node: LocalNode | None
    selected: str | None
    presets: dict[str, Scenario]
    compare_results: list[list[RunResult]]

    def refresh_view(self) -> None:
        """Redraw from the model (DispatchLab implements it)."""

    def show_selection(self) -> None:
        """Mark the selected worker's card (DispatchLab implements it)."""

    def run_scenario_actions(self, scenario: Scenario) -> None:
        """A scenario's timed actions, as the headless runner does them."""
        assert self.backend is not None
        backend = self.backend
        for action in scenario.actions:

            def act(action: Action = action) -> None:
                if action.do == "restart_broker":
                    self.action_restart_broker()
                else:
                    apply_action(action, backend.pool, self.set_mode)
                self.notify(f"{for_toast(scenario.name)}: {for_toast(action.describe())}", timeout=3, markup=False)

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
        lines = "\n".join(("✓ " if c.ok else "✗ ") + printable(c.describe()) for c in results)
        self.notify(lines, title=f"{for_toast(scenario.name)}: {'as expected' if not failed else 'NOT as expected'}",
                    severity="error" if failed else "information", timeout=15, markup=False)  # fmt: skip

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
        self.show_selection()

    def _read_only(self, what: str) -> bool:
        """True in a replay (no backend), after saying so: a key that does nothing must not be silent."""
        if self.backend is not None:
            return False
        self.notify(f"Read-only view: no live workers to {what}.", severity="warning", timeout=3)
        return True

    def action_add_worker(self) -> None:
        if self._read_only("add to") or self.backend is None:
            return
        if len(self.backend.pool.running()) >= self.backend.pool.MAX_WORKERS:
            self.notify(f"At most {self.backend.pool.MAX_WORKERS} workers.", severity="warning")
            return
        name = self.backend.pool.spawn()
        self.notify(f"Starting worker {for_toast(name)}", timeout=2, markup=False)

    def action_kill(self) -> None:
        if self._read_only("kill"):
            return
        name = self._selected_worker()
        if name is None or self.backend is None:
            return
        held = self.model.workers[name].in_hand
        if not self.backend.pool.kill(name):
            self.notify(f"{for_toast(name)} is not running.", severity="warning", markup=False)
            return
        fate = "lost (auto ack)" if self.model.workers[name].ack == "auto" else "requeued by the broker"
        self.notify(f"Killed {for_toast(name)} with SIGKILL: {held} task(s) it held will be {fate}.", markup=False)

    def action_stop(self) -> None:
        if self._read_only("stop"):
            return
        name = self._selected_worker()
        if name is not None and self.backend is not None and not self.backend.pool.stop(name):
            self.notify(f"{for_toast(name)} is not running.", severity="warning", markup=False)

    def action_restart(self) -> None:
        if self._read_only("restart"):
            return
        name = self._selected_worker()
        if name is None or self.backend is None:
            return
        pool = self.backend.pool
        if name in pool.running():
            pool.stop(name)
            self.run_worker(self._respawn_when_gone(name), name=f"restart-{name}", group=f"restart-{name}")
        else:
            pool.spawn(name)
        self.notify(f"Restarting {for_toast(name)}", timeout=2, markup=False)

    async def _respawn_when_gone(self, name: str) -> None:
        assert self.backend is not None
        pool = self.backend.pool
        for _ in range(600):
            if name not in pool.running():
                pool.spawn(name)
                return
            await asyncio.sleep(0.1)
        self.notify(
            f"{for_toast(name)} is still finishing its task; kill it (F3) to restart now.",
            severity="warning",
            markup=False,
        )

    def set_mode(self, mode: DispatchMode) -> None:
        if self._read_only("switch to another mode") or self.backend is None:
            return
        self.backend.set_mode(mode)
        self.notify(f"Mode for all workers: {mode.describe()}", timeout=4)

    @property
    def mode(self) -> DispatchMode:
        """The mode last asked for: the model hears of it only at the next refresh."""
        return self.backend.pool.mode if self.backend is not None else self.model.mode

    def action_compare(self) -> None:
        if self.backend is None:
            self.notify("Read-only view: no broker to run a comparison on.", severity="warning")
            return
        spd = min(self.config.seconds_per_dot, 0.2) or 0.2  # a comparison should take seconds, not minutes
        ack = self.mode.ack if self.mode.ack != "none" else "manual"  # never-acked runs never finish
        screen = CompareScreen(self.config.url, self.presets, self.compare_results, seconds_per_dot=spd, ack=ack)
        self.push_screen(screen)

    def action_cycle_prefetch(self) -> None:
        current = self.mode
        following = [p for p in PREFETCH_CYCLE if p > current.prefetch]
        self.set_mode(DispatchMode(following[0] if following else PREFETCH_CYCLE[0], current.ack))

    def action_cycle_ack(self) -> None:
        current = self.mode
        ack = ACK_MODES[(ACK_MODES.index(current.ack) + 1) % len(ACK_MODES)]
        self.set_mode(DispatchMode(current.prefetch, ack))

    def action_set_prefetch(self) -> None:
        def chosen(prefetch: int | None) -> None:
            if prefetch is not None:
                self.set_mode(DispatchMode(prefetch, self.mode.ack))

        self.push_screen(PrefetchDialog(self.mode.prefetch), chosen)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "restart_broker":
            return self.node is not None  # only a broker we started ourselves
        return True

    def action_restart_broker(self) -> None:
        if self.node is not None and self.backend is not None:
            kept = self.config.durable and self.config.persistent
            what = (
                "durable queue, persistent messages: tasks should survive" if kept else "transient: tasks will be lost"
            )
            self.notify(f"Restarting the broker ({what}) …", timeout=8)
            self.restart_node(kept)

    @work(thread=True, exclusive=True, group="broker-restart", exit_on_error=False)
    def restart_node(self, kept: bool) -> None:
        assert self.node is not None and self.backend is not None
        began = time.monotonic()
        try:
            self.node.restart()
        except LocalNodeError as exc:
            self.call_from_thread(
                self.notify, for_toast(str(exc), ERROR_CHARS), severity="error", timeout=15, markup=False
            )
            return
        seconds = time.monotonic() - began
        self.backend.inbox.put(BrokerRestarted(time.time(), kept, seconds))
        self.call_from_thread(self.notify, f"Broker back after {seconds:.1f} s; workers reconnect by themselves.")

    def action_purge(self) -> None:
        if self._read_only("purge a queue for"):
            return
        if self.backend is not None:
            self.backend.purge()
            self.notify("Purging the queue's ready messages", timeout=2)
