"""Provides LabActions: what the dashboard's keys, palette and scenario timers do to workers, modes and the broker.

The app owns one and hands each key on to it; every action here is one request
to the backend (tui/engine/backend.py, the only door for commands) told in a toast.
No widgets: toasts and dialogs go through the app's public API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from rich.text import Text
from textual.app import App
from textual.notifications import SeverityLevel

from tui.engine.backend import Backend, LabConfig, Refused
from tui.engine.runner import RunResult, apply_action, check, settled
from tui.engine.session_log import SessionLog
from tui.model.scenarios import Action, Do, Scenario
from tui.model.state import Model
from tui.teaching.export import not_saved, save_session, session_folder
from tui.text import ERROR_CHARS, for_toast, quoted
from tui.view.widgets.compare_screen import CompareScreen
from tui.view.widgets.mode_dialog import PrefetchDialog
from tui.view.widgets.publisher import PublisherPane
from tui.view.widgets.worker_grid import WorkerGrid
from workers.control import Unreached
from workers.settings import ACK_MODES, DEFAULT_QUEUE, DEFAULT_URL, FAIL_MODES, AckMode, DispatchMode, FailMode

PREFETCH_CYCLE = (0, 1, 10)
NAMES_SHOWN = 5
"""Remote workers named in one toast at most (a class has thirty): the rest are counted."""


WATCH_ONLY = "Watch-only: this view follows the class; the dashboard that runs the workers changes things."


def no_workers(queue: str, durable: bool, default_broker: bool = True, *, reports: bool = False) -> str:
    """How to get a worker when the dashboard started none: here, or in another terminal or on another machine.

    The URL is not written out (its password must not show): another broker than the default is named by AMQP_URL.
    """
    options = ("" if queue == DEFAULT_QUEUE else f" --queue {quoted(queue)}") + ("" if durable else " --transient")
    where = "" if default_broker else " with AMQP_URL set to this dashboard's broker (in the header)"
    if reports:  # a class: each student's worker reports through the broker and shows here as a card
        return (
            f"Press F2 to start a worker here, or run `dispatch-lab worker --report --accept-control{options}` "
            f"in another terminal or on a student's machine{where}: each shows here as a card. "
            "Tasks wait in the queue until a worker consumes them."
        )
    return (
        f"Press F2 to start a worker here, or run `dispatch-lab worker{options}` in another terminal{where} "
        "(the tutorial's worker.py): tasks wait in the queue until a worker consumes them."
    )


def some_names(names: list[str]) -> str:
    """Worker names for a toast: the first few, and how many more."""
    shown = ", ".join(for_toast(name, 24) for name in names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def restart_fate(durable: bool, persistent: bool) -> str:
    """What a broker restart does to the tasks waiting in the queue, for the queue and messages this lab uses."""
    if durable and persistent:
        return "durable queue, persistent messages: waiting tasks should survive"
    if durable:
        return "durable queue, but non-persistent messages: the queue comes back, its waiting tasks are lost"
    if persistent:
        return "transient queue: it goes with the restart, and its tasks (persistent or not) with it"
    return "transient queue, non-persistent messages: the queue and its tasks will be lost"


class LabActions:
    """Actions on the lab; every one is a non-blocking request to the backend (none in a replay)."""

    def __init__(
        self,
        app: App[int],
        config: LabConfig,
        model: Model,
        backend: Backend | None,
        presets: dict[str, Scenario],
        log: SessionLog | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.model = model
        self.backend = backend
        self.presets = presets
        self.session_log = log
        self.compare_results: list[list[RunResult]] = []
        """Every comparison run in this session, newest last (the compare screen shows them all)."""

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
    ) -> None:
        """A toast: the app's, looked up at each call (tests listen there); never markup, names come from outside."""
        self.app.notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    def _from_thread(self, tell: Callable[[], None]) -> None:
        """Run ``tell`` on the UI thread, from a backend thread; an app that has closed meanwhile has nobody to tell."""
        try:
            self.app.call_from_thread(tell)
        except RuntimeError:
            pass

    def publish(self, message: PublisherPane.PublishTasks) -> None:
        if self.backend is None:
            self.notify("Read-only view: nothing to publish to.", severity="warning")
            return
        if self._read_only("publish to"):
            return
        scenario = message.scenario
        if scenario is not None and scenario.on_fail is not None and scenario.on_fail is not self.on_fail:
            self.set_fail_mode(scenario.on_fail)  # before its tasks can fail
        if scenario is not None:
            # A run: its tasks are numbered from 1 (odd-heavy's heavy ones are its odd ones) and summed up at the end.
            self.backend.publish_run(scenario.name, message.bodies)
            self.notify(f"Publishing {message.label} as a run ({len(message.bodies)} tasks)", timeout=3)
            self._tell_what_the_preset_needs(scenario)
        else:
            self.backend.publish(message.bodies)
            self.notify(f"Publishing {message.label} ({len(message.bodies)} tasks)", timeout=3)
        if scenario is not None and scenario.actions:
            self.run_scenario_actions(scenario)

    def _tell_what_the_preset_needs(self, scenario: Scenario) -> None:
        """A preset meant for another queue or broker runs anyway; the flags that show it as meant are said."""
        flags: list[str] = []
        if scenario.queue is not None and scenario.queue != self.config.spec:
            flags += scenario.queue.argv()
        if scenario.ack_timeout is not None and self.model.ack_deadline()[0] != scenario.ack_timeout:
            flags += ["--broker", "private", "--ack-timeout", f"{scenario.ack_timeout:g}"]
        if flags:
            self.notify(
                f"{for_toast(scenario.name)} is meant for: dispatch-lab {' '.join(flags)} (this queue is declared "
                "otherwise; a queue's arguments cannot change while it exists).",
                severity="warning",
                timeout=10,
            )

    def run_scenario_actions(self, scenario: Scenario) -> None:
        """A scenario's timed actions, as the headless runner does them."""
        assert self.backend is not None
        backend = self.backend
        for action in scenario.actions:

            def act(action: Action = action) -> None:
                if action.do is Do.RESTART_BROKER:
                    self.restart_broker()
                else:
                    apply_action(action, backend, self.set_mode)
                self.notify(f"{for_toast(scenario.name)}: {for_toast(action.describe())}", timeout=3)

            self.app.set_timer(action.at, act)
        if scenario.expect:
            last = max(a.at for a in scenario.actions) + 1.0
            self.app.set_timer(last, lambda: self.app.run_worker(self._check_when_settled(scenario), group="checks"))

    async def _check_when_settled(self, scenario: Scenario) -> None:
        for _ in range(1200):
            if settled(self.model):
                break
            await asyncio.sleep(0.5)
        results = check(scenario, self.model)
        failed = [c for c in results if not c.ok]
        lines = "\n".join(("✓ " if c.ok else "✗ ") + for_toast(c.describe(), ERROR_CHARS) for c in results)
        self.notify(lines, title=f"{for_toast(scenario.name)}: {'as expected' if not failed else 'NOT as expected'}",
                    severity="error" if failed else "information", timeout=15)  # fmt: skip

    # ----- actions

    def started(self, grid: WorkerGrid) -> None:
        """The dashboard is up: with no worker of its own (``--workers 0``), the empty grid says how to get one."""
        if self.backend is not None and self.config.workers == 0 and not self.config.watch_only:
            config = self.config
            default = config.url == DEFAULT_URL and not config.private_broker
            hint = no_workers(config.queue, config.durable, default, reports=config.hear_reports)
            grid.empty_hint = Text.assemble(("No workers yet. ", "bold"), hint)

    def _selected_worker(self, name: str | None) -> str | None:
        if name in self.model.workers:
            return name
        self.notify("No worker selected: click a card or press Ctrl+N.", severity="warning")
        return None

    def _read_only(self, what: str) -> bool:
        """True in a replay (no backend) or a watching tab, after saying so: a key must never do nothing silently."""
        if self.config.watch_only:
            self.notify(WATCH_ONLY, severity="warning", timeout=4)
            return True
        if self.backend is not None:
            return False
        self.notify(f"Read-only view: no live workers to {what}.", severity="warning", timeout=3)
        return True

    def _remote(self, name: str, what: str) -> bool:
        """True for a worker on another machine, after saying that no dashboard can ``what`` it, and what it can do."""
        worker = self.model.workers.get(name)
        if worker is None or not worker.remote:
            return False
        where = f" on {for_toast(worker.host)}" if worker.host else " on another machine"
        instead = (
            "Press F4 to stop it instead (it accepts control)."
            if worker.control
            else "Stop it where it runs (Ctrl+C there)."
        )
        self.notify(
            f"{for_toast(name)} runs{where}: the dashboard cannot {what} a process on another machine. {instead}",
            severity="warning",
            timeout=6,
        )
        return True

    def _remote_workers(self) -> list[str]:
        """The live workers on other machines: a change for all workers is for them too, if they accept it."""
        return [w.name for w in self.model.workers.values() if w.remote and w.alive]

    def _unreached(self, what: str) -> Unreached:
        """A toast, from the control sender's thread, naming the remote workers a command did not reach."""

        def tell(names: list[str], why: str) -> None:
            said = f"{what} did not reach {some_names(names)}: {for_toast(why, ERROR_CHARS)}"
            self._from_thread(lambda: self.notify(said, severity="warning", timeout=10))

        return tell

    def _for_all(self, said: str, change: Callable[[list[str], Unreached], list[str]], what: str) -> None:
        """A change for all workers: ours, and the remote ones that accept control; its toast says which it missed.

        ``change(remote, unreached)`` makes it and returns the remote workers it could not send it to.
        """
        remote = self._remote_workers()
        refused = change(remote, self._unreached(what))
        told = len(remote) - len(refused)
        if told:
            said += f". Sent to {told} remote worker(s) over the control exchange."
        if refused:
            said += ("" if told else ".") + f" Not reached (started without --accept-control): {some_names(refused)}."
        self.notify(said, timeout=8 if refused else 4)

    def add_worker(self) -> None:
        if self._read_only("add to") or self.backend is None:
            return
        name = self.backend.add_worker()
        if isinstance(name, Refused):
            self.notify(name.reason, severity="warning")
            return
        self.notify(f"Starting worker {for_toast(name)}", timeout=2)

    def kill(self, selected: str | None) -> None:
        if self._read_only("kill"):
            return
        name = self._selected_worker(selected)
        if name is None or self.backend is None or self._remote(name, "kill"):
            return
        held = self.model.workers[name].in_hand
        if not self.backend.kill(name):
            self.notify(f"{for_toast(name)} is not running.", severity="warning")
            return
        ack = self.model.workers[name].ack
        fate = "lost (auto ack)" if ack is not None and ack.lost_with_worker else "requeued by the broker"
        self.notify(f"Killed {for_toast(name)} with SIGKILL: {held} task(s) it held will be {fate}.")

    def stop(self, selected: str | None) -> None:
        if self._read_only("stop"):
            return
        name = self._selected_worker(selected)
        if name is None or self.backend is None:
            return
        worker = self.model.workers[name]
        if worker.remote:
            self._stop_remote(name)
        elif not self.backend.stop(name):
            self.notify(f"{for_toast(name)} is not running.", severity="warning")

    def _stop_remote(self, name: str) -> None:
        """Stop a worker on another machine over the control exchange, when it accepts that."""
        assert self.backend is not None
        if not self.model.workers[name].alive:
            self.notify(f"{for_toast(name)} is not running.", severity="warning")
            return
        refused = self.backend.stop_remote(name, self._unreached("Stop"))
        if refused is not None:
            self.notify(refused.reason, severity="warning", timeout=8)
            return
        self.notify(f"Asked {for_toast(name)} to stop, over the control exchange: it finishes its task first.")

    def restart(self, selected: str | None) -> None:
        if self._read_only("restart"):
            return
        name = self._selected_worker(selected)
        if name is None or self.backend is None or self._remote(name, "restart"):
            return

        def gave_up(name: str = name) -> None:
            self._from_thread(
                lambda: self.notify(
                    f"{for_toast(name)} is still finishing its task; kill it (F3) to restart now.", severity="warning"
                )
            )

        self.backend.restart(name, gave_up)
        self.notify(f"Restarting {for_toast(name)}", timeout=2)

    def set_mode(self, mode: DispatchMode) -> None:
        if self._read_only("switch to another mode") or self.backend is None:
            return
        backend = self.backend
        self._for_all(
            f"Mode for all workers: {mode.describe()}",
            lambda remote, unreached: backend.set_mode(mode, remote, unreached),
            "The mode change",
        )

    @property
    def mode(self) -> DispatchMode:
        """The mode last asked for: the model hears of it only at the next refresh."""
        return self.backend.mode if self.backend is not None else self.model.mode

    @property
    def on_fail(self) -> FailMode:
        """The failure mode last asked for."""
        return self.backend.on_fail if self.backend is not None else self.model.on_fail

    def set_fail_mode(self, on_fail: FailMode) -> None:
        if self._read_only("switch to another failure mode") or self.backend is None:
            return
        backend = self.backend
        self._for_all(
            f"On failure, for all workers: {on_fail.words}: {on_fail.help[0]}",
            lambda remote, unreached: backend.set_fail_mode(on_fail, remote, unreached),
            "The failure mode change",
        )

    def cycle_fail_mode(self) -> None:
        self.set_fail_mode(FAIL_MODES[(FAIL_MODES.index(self.on_fail) + 1) % len(FAIL_MODES)])

    def move_dead_letters_back(self) -> None:
        if self._read_only("move dead letters for") or self.backend is None:
            return
        refused = self.backend.move_dead_letters_back()
        if refused is not None:
            self.notify(refused.reason, severity="warning")
            return
        self.notify("Moving the dead letters back to the work queue, for another try", timeout=3)

    def compare(self) -> None:
        if self.config.watch_only:
            self.notify(WATCH_ONLY, severity="warning", timeout=4)
            return
        if self.backend is None:
            self.notify("Read-only view: no broker to run a comparison on.", severity="warning")
            return
        spd = min(self.config.seconds_per_dot, 0.2) or 0.2  # a comparison should take seconds, not minutes
        # Manual ack whatever the dashboard runs: after an auto-ack lesson every prefetch would take the same
        # time, and nothing would say why. The screen offers the other modes that finish; it names the one used.
        screen = CompareScreen(
            self.config.url, self.presets, self.compare_results, seconds_per_dot=spd, ack=AckMode.MANUAL
        )
        self.app.push_screen(screen)

    def cycle_prefetch(self) -> None:
        current = self.mode
        following = [p for p in PREFETCH_CYCLE if p > current.prefetch]
        self.set_mode(DispatchMode(following[0] if following else PREFETCH_CYCLE[0], current.ack))

    def cycle_ack(self) -> None:
        current = self.mode
        ack = ACK_MODES[(ACK_MODES.index(current.ack) + 1) % len(ACK_MODES)]
        self.set_mode(DispatchMode(current.prefetch, ack))

    def set_prefetch(self) -> None:
        def chosen(prefetch: int | None) -> None:
            if prefetch is not None:
                self.set_mode(DispatchMode(prefetch, self.mode.ack))

        self.app.push_screen(PrefetchDialog(self.mode.prefetch), chosen)

    @property
    def can_restart_broker(self) -> bool:
        """Only a broker we started ourselves (a private node) can be restarted from here."""
        return self.backend is not None and self.backend.node is not None and not self.config.watch_only

    def restart_broker(self) -> None:
        if self.can_restart_broker and self.backend is not None:
            self.notify(f"Restarting the broker ({restart_fate(self.config.durable, self.config.persistent)}) …",
                        timeout=8)  # fmt: skip

            def done(seconds: float) -> None:
                self._from_thread(
                    lambda: self.notify(f"Broker back after {seconds:.1f} s; workers reconnect by themselves.")
                )

            def failed(message: str) -> None:
                self._from_thread(lambda: self.notify(for_toast(message, ERROR_CHARS), severity="error", timeout=15))

            self.backend.restart_broker(done, failed)

    def purge(self) -> None:
        if self._read_only("purge a queue for"):
            return
        if self.backend is not None:
            self.backend.purge()
            self.notify("Purging the queue's ready messages", timeout=2)

    def save(self) -> None:
        """Save a screenshot, the ledger and the event log into runs/session-…/ (files written off the UI thread).

        runs/ is in the current folder unless --runs-dir says otherwise. A folder that cannot be
        written (``cd /sys``) is a toast that says why; the dashboard runs on.
        """
        try:
            folder = session_folder(self.config.runs_dir)
            self.app.save_screenshot(filename="screen.svg", path=str(folder))
        except OSError as exc:
            self.notify(not_saved(exc), severity="error", timeout=10)
            return
        # A copy taken here, between two folds: the thread then reads records nobody adds to or drops.
        records = list(self.model.ledger.records.values())

        def write() -> None:
            try:
                said = save_session(folder, records, self.session_log)
            except OSError as exc:  # a full disk, a folder removed meanwhile: say so, as for the screenshot
                failed = not_saved(exc)
                self._from_thread(lambda: self.notify(failed, severity="error", timeout=10))
                return
            self._from_thread(lambda: self.notify(said, timeout=8))

        self.app.run_worker(write, name="save", group="save", thread=True, exit_on_error=False)
