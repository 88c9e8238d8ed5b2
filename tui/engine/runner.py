"""Provides headless scenario runs: real workers on a fresh queue, timed actions, figures and checks.

Used by ``dispatch-lab compare`` and by the tests. No Textual: the run folds
the same observations into the same ``Model`` the dashboard uses, including the
broker's own queue figures from the dashboard's own ``QueueMonitor``.

A run handed a private ``LocalNode`` can restart its broker (the
``restart_broker`` action): the restart runs on a thread while the run goes on
folding events; the actions' clock stops meanwhile (a worker started while the
broker is down would only fail to connect), and a restart that falls due while
tasks are still being published waits until they all are (a publish cut off by
the restart could not be retried without risking a second copy).
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from tui.engine.backend import Backend, LabConfig
from tui.engine.pool import WorkerPool
from tui.engine.session_log import SessionLog
from tui.model import observations as obs
from tui.model.ledger import DEAD_LETTERED, DONE, DROPPED, HELD, TERMINAL, MessageRecord
from tui.model.runs import WorkerFigures
from tui.model.scenarios import EXACT, EXPECTATIONS, Action, Do, Scenario
from tui.model.state import Model, WorkerStatus
from workers.broker import BrokerError, connect, declare_task_queue, server_version
from workers.local_node import LocalNode
from workers.settings import DispatchMode, FailMode, QueueSpec, check_ack, check_fail

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Check:
    """One expectation and whether the run met it."""

    name: str
    wanted: int | bool
    actual: int | bool
    ok: bool

    def describe(self) -> str:
        mark = "ok" if self.ok else "FAILED"
        return f"{EXPECTATIONS.get(self.name, self.name)}: wanted {self.wanted}, got {self.actual} ({mark})"


def check(scenario: Scenario, model: Model) -> list[Check]:
    """The scenario's expectations against a finished run's model."""
    ledger = model.ledger
    records = list(ledger.records.values())
    actual: dict[str, int | bool] = {
        "all_done": ledger.done_messages == ledger.confirmed,
        "lost": ledger.lost,
        "lost_at_least": ledger.lost,
        "redelivered_at_least": ledger.redeliveries,
        "duplicates_at_most": ledger.duplicates,
        "failures_at_least": ledger.failures,
        "dead_lettered": ledger.dead_lettered,
        "good_dead_lettered": len(good_dead(records)),
        "good_all_done": all(r.state == DONE for r in records if not r.bad),
        "max_delivery_count": ledger.max_count,
        "ack_lost_at_least": ledger.ack_lost,
        "done_at_least": ledger.done_messages,
    }
    checks = []
    for name, wanted in scenario.expect.items():
        got = actual[name]
        if name in EXACT:
            ok = got == wanted
        elif name.endswith("_at_least"):
            ok = int(got) >= int(wanted)
        else:
            ok = int(got) <= int(wanted)
        checks.append(Check(name, wanted, got, ok))
    return checks


def good_dead(records: Sequence[MessageRecord]) -> list[MessageRecord]:
    """Good tasks (no '!') the broker dead-lettered or dropped: taken down with a bad one."""
    return [r for r in records if not r.bad and r.state in (DEAD_LETTERED, DROPPED)]


def random_kills(
    seed: int | str,
    workers: Sequence[str],
    *,
    every: float = 0.5,
    count: int = 10,
    first: float | None = None,
) -> list[Action]:
    """A seeded chaos schedule: every ``every`` s SIGKILL a random live worker and start a new one.

    Replacements get fresh names (w5, w6, ... after w1-w4): a worker started again
    under its old name could be marked dead by the old process's late exit.
    """
    rng = random.Random(seed)
    live = list(workers)
    number = max((int(name[1:]) for name in live if name[1:].isdigit()), default=0)
    actions: list[Action] = []
    at = every if first is None else first
    for _ in range(count):
        victim = rng.choice(live)
        live.remove(victim)
        number += 1
        live.append(f"w{number}")
        actions += [Action(at, Do.KILL, victim), Action(at, Do.START, f"w{number}")]
        at += every
    return actions


def apply_action(action: Action, backend: Backend, set_mode: Callable[[DispatchMode], object]) -> None:
    """Carry out one scenario action through a backend (the dashboard's or a headless run's).

    ``set_mode``: the backend's, or one that also tells the user. ``restart_broker``
    needs a broker of our own and is left to the caller.
    """
    if action.do is Do.KILL and action.worker:
        backend.kill(action.worker)
    elif action.do is Do.STOP and action.worker:
        backend.stop(action.worker)
    elif action.do is Do.START:
        backend.add_worker(action.worker)
    elif action.do is Do.PREFETCH and isinstance(action.value, int):
        set_mode(DispatchMode(action.value, backend.mode.ack))
    elif action.do is Do.ACK and isinstance(action.value, str):
        set_mode(DispatchMode(backend.mode.prefetch, check_ack(action.value)))
    elif action.do is Do.ON_FAIL and isinstance(action.value, str):
        backend.set_fail_mode(check_fail(action.value))


@dataclass
class RunResult:
    """A finished run: its figures, checks and the model they came from."""

    scenario: str
    mode: DispatchMode
    workers: list[WorkerFigures]
    makespan: float
    published: int
    done: int
    redeliveries: int
    lost: int
    duplicates: int
    checks: list[Check]
    timed_out: bool
    model: Model
    kills: int = 0
    broker_restarts: int = 0
    on_fail: FailMode = FailMode.REQUEUE
    queue: QueueSpec = field(default_factory=QueueSpec)
    broker_version: str = ""

    def failures(self) -> dict[str, object]:
        """What failed and what the broker did about it: the figures of issue 15's lessons."""
        ledger = self.model.ledger
        records = list(ledger.records.values())
        bad = [r for r in records if r.bad]
        limit, source = self.model.delivery_limit()
        return {
            "on_fail": self.on_fail.value,
            "queue": self.queue.describe(),
            "broker_version": self.broker_version,
            "delivery_limit": limit,
            "delivery_limit_source": source,
            "failures": ledger.failures,
            "requeued": ledger.requeued,
            "rejected": ledger.rejected,
            "crashed": ledger.crashed,
            "dead_lettered": ledger.dead_lettered,
            "dropped": ledger.dropped,
            "dead_letter_queue": self.model.dead.count,
            "max_delivery_count": ledger.max_count,
            "loop_peak_per_s": max((count for _, count in self.model.fail_per_second), default=0),
            "ack_lost": ledger.ack_lost,
            "bad_tasks": [
                {
                    "task": r.label(),
                    "deliveries": len(r.deliveries) + r.elided,
                    "failures": r.failures,
                    "state": r.state,
                }
                for r in bad
            ],
            "good_delayed": [
                {"task": (ledger.records[i].label() if i in ledger.records else i), "behind": by}
                for i, by in ledger.delayed.items()
            ],
            "good_dead_lettered": [r.label() for r in good_dead(records)],
        }

    def as_dict(self) -> dict[str, object]:
        return {
            "scenario": self.scenario,
            "prefetch": self.mode.prefetch,
            "ack": self.mode.ack,
            "mode": self.mode.describe(),
            "makespan_s": round(self.makespan, 3),
            "published": self.published,
            "done": self.done,
            "redeliveries": self.redeliveries,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "kills": self.kills,
            "broker_restarts": self.broker_restarts,
            "timed_out": self.timed_out,
            "workers": [
                {
                    "name": w.name,
                    "done": w.done,
                    "busy_s": round(w.busy, 3),
                    "idle_while_work_waiting_s": round(w.idle_while_waiting, 3),
                    "tasks": w.labels,
                }
                for w in self.workers
            ],
            "checks": [{"name": c.name, "wanted": c.wanted, "actual": c.actual, "ok": c.ok} for c in self.checks],
            **self.failures(),
        }


def settled(model: Model) -> bool:
    """Every published task finished or lost, and nothing is held anywhere."""
    ledger = model.ledger
    if ledger.confirmed < ledger.published or ledger.published == 0:
        return False
    return all(r.state in TERMINAL for r in ledger.records.values())


class ScenarioRun:
    """One scenario under one dispatch mode, on its own temporary queue."""

    SAMPLE = 0.05
    PUBLISH_POLL = 0.002
    """Seconds between two looks at the actions due while tasks are published (a publish takes about a ms)."""

    def __init__(
        self,
        url: str,
        scenario: Scenario,
        *,
        mode: DispatchMode,
        workers: int = 2,
        seconds_per_dot: float = 0.2,
        timeout: float = 300.0,
        log: SessionLog | None = None,
        progress: Progress | None = None,
        node: LocalNode | None = None,
        until_settled: bool = False,
        queue: QueueSpec | None = None,
        on_fail: FailMode | None = None,
    ) -> None:
        """``node``: the private broker ``url`` points at, for ``restart_broker`` actions.

        ``until_settled``: for an open-ended chaos schedule. The actions still to come
        are dropped once the work is over (the broker's queue empty, no task held),
        and the run ends as soon as every task is settled; by default all actions run.
        """
        self.url = url
        self.scenario = scenario
        self.mode = mode
        self.worker_count = workers
        self.seconds_per_dot = seconds_per_dot
        self.timeout = timeout
        self.log = log
        self.progress = progress or (lambda text: None)
        self.queue = f"dlab-run-{secrets.token_hex(4)}"
        # The scenario's queue and failure mode, unless the caller (compare's flags) says otherwise.
        self.spec = queue or scenario.queue or QueueSpec()
        self.on_fail = on_fail or scenario.on_fail or FailMode.REQUEUE
        timeout_known = None if node is None else scenario.ack_timeout
        # workers=0: the run starts its own, one at a time, each checked (_start_workers).
        config = LabConfig(
            url, queue=self.queue, workers=0, mode=mode, seconds_per_dot=seconds_per_dot, on_fail=self.on_fail,
            spec=self.spec, ack_timeout=timeout_known,
            ack_timeout_source="set on the private node" if timeout_known else "",
        )  # fmt: skip
        self.config = config
        self.backend = Backend(config, node=node)
        self.inbox = self.backend.inbox
        self.model = Model(queue=self.queue, mode=mode, prefix=self.backend.prefix, spec=self.spec,
                           on_fail=self.on_fail, ack_timeout=timeout_known,
                           ack_timeout_source=config.ack_timeout_source)  # fmt: skip
        self.node = node
        self.until_settled = until_settled
        self.kills = 0
        self.broker_restarts = 0
        self._publishing = False
        self._restart: threading.Thread | None = None
        self._restart_error: str | None = None
        self._paused = 0.0
        """Seconds the actions' clock stood still while the broker restarted."""
        self._calm_after = 0.0
        """Wall-clock time of the last publish or broker restart: queue figures from before it are no news."""
        self._publish_error: str | None = None

    @property
    def pool(self) -> WorkerPool:
        return self.backend.pool

    @property
    def prefix(self) -> str:
        """Our tasks' message id prefix."""
        return self.backend.prefix

    def _fold(self) -> None:
        ledger = self.model.ledger
        for items, logged in self.inbox.slices(self.inbox.take()):
            if self.log is not None:
                self.log.add(logged)
            failed = ledger.failed
            self.model.apply_all(items)
            if ledger.failed > failed and self._publish_error is None:
                self._publish_error = next(i.message for i in items if type(i) is obs.PublishFailed)

    def _wait(self, condition: Callable[[], bool], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                raise BrokerError(f"Timed out after {seconds:.0f} s waiting for {what}.")
            time.sleep(0.02)
            self._fold()

    def _start_workers(self) -> None:
        # One at a time, so consumer order (and so round-robin order) is w1, w2, ...
        for _ in range(self.worker_count):
            name = self.pool.spawn()  # not add_worker: a run's own count, checked by its caller
            self._wait(lambda n=name: self._ready_or_dead(n), 30, f"worker {name} to start")  # type: ignore[misc]
            worker = self.model.workers[name]
            if not worker.alive:
                detail = "; ".join(worker.stderr) or f"exit code {worker.exit_code}"
                raise BrokerError(f"Worker {name} failed to start: {detail}")

    def _ready_or_dead(self, name: str) -> bool:
        worker = self.model.workers.get(name)
        return worker is not None and (worker.status is WorkerStatus.IDLE or not worker.alive)

    def _do(self, action: Action) -> None:
        if action.do is Do.RESTART_BROKER:
            self._restart_broker()
        elif action.do is Do.KILL and action.worker:
            self.kills += self.backend.kill(action.worker)
        else:
            apply_action(action, self.backend, self.backend.set_mode)
        self.progress(f"{self.scenario.name}: {action.describe()}")

    @property
    def restarting(self) -> bool:
        return self._restart is not None and self._restart.is_alive()

    def _restart_broker(self) -> None:
        # The run's queue is durable and its messages persistent: they survive (BrokerRestarted says so).

        def done(seconds: float) -> None:
            self._calm_after = time.time()
            self._paused += seconds
            self.broker_restarts += 1

        def failed(message: str) -> None:
            self._restart_error = message

        self._restart = self.backend.restart_broker(done, failed)
        if self._restart is None:
            raise BrokerError("A restart_broker action needs the run's own private broker (a LocalNode).")

    def run(self) -> RunResult:
        connection = connect(self.url, name="dispatch-lab run setup")
        try:
            self.model.set_broker_version(server_version(connection) or "")  # 4.0+: a default delivery limit
            declare_task_queue(connection.channel(), self.queue, spec=self.spec)
            self.backend.start()  # the monitor and the publisher; no workers yet
            self._start_workers()
            self.progress(f"{self.scenario.name}: publishing {len(self.scenario.tasks)} tasks, {self.mode.describe()}")
            started = time.monotonic()
            pending = list(self.scenario.actions)
            self._publishing = True
            self.backend.publish_run(self.scenario.name, list(self.scenario.tasks))
            while self.backend.publisher.pending > 0:
                pending = self._act(pending, started)
                self._fold()
                self._check_published()
                time.sleep(self.PUBLISH_POLL)
            self._publishing = False
            self._calm_after = max(self._calm_after, time.time())
            timed_out = self._drain(started, pending)
            self._wait_for_dead_letters()
        finally:
            if self._restart is not None:
                self._restart.join(60)  # the node must be up again before the queue can go
            self.backend.shutdown()
            self._fold()
            try:
                if connection.is_open:
                    connection.close()
            except Exception:
                pass  # a broker restart closed it
            self._delete_queue()
        if self._restart_error:
            raise BrokerError(self._restart_error)
        return self._result(timed_out)

    def _wait_for_dead_letters(self, seconds: float = 3.0) -> None:
        """Until the dead-letter queue's own count has caught up with ours (its watcher samples twice a second)."""
        if self.backend.dead_letters is None:
            return
        deadline = time.monotonic() + seconds
        model = self.model
        while model.dead.count != model.ledger.dead_lettered and time.monotonic() < deadline:
            time.sleep(0.05)
            self._fold()

    def _delete_queue(self) -> None:
        try:
            # A fresh connection: a broker restart has closed the ones opened before it.
            connection = connect(self.url, name="dispatch-lab run cleanup")
        except BrokerError:
            return
        try:
            channel = connection.channel()
            channel.queue_delete(self.queue)
            dead = self.spec.dead_letter_queue(self.queue)
            if dead is not None:
                channel.queue_delete(dead)
        except Exception:
            pass
        finally:
            try:
                connection.close()
            except Exception:
                pass

    def _act(self, pending: list[Action], started: float) -> list[Action]:
        if self.restarting:
            return pending  # the clock stands still until the broker is back
        elapsed = time.monotonic() - started - self._paused
        due = [a for a in pending if a.at <= elapsed]
        for action in due:
            if action.do is Do.RESTART_BROKER and (self._publishing or self.restarting):
                continue  # after the last publish (see the module docstring), one restart at a time
            pending.remove(action)
            self._do(action)
        return pending

    def _work_over(self) -> bool:
        """Everything published, the broker's queue empty since, no task in any worker's hands."""
        queue = self.model.queue
        return (
            not self._publishing
            and not self.restarting
            and queue.sampled is not None
            and queue.sampled > self._calm_after
            and queue.ready == 0
            and self.model.ledger.count(HELD) == 0
        )

    def _check_published(self) -> None:
        """A task the broker would not take ends the run: its figures would be wrong."""
        if self._publish_error is not None:
            raise BrokerError(self._publish_error)

    def _drain(self, started: float, pending: list[Action]) -> bool:
        while time.monotonic() - started < self.timeout:
            self._fold()
            self._check_published()  # the last task's failure may come after the publishing ended
            pending = self._act(pending, started)
            if self.until_settled and pending and self._work_over():
                self.progress(f"{self.scenario.name}: the work is over; {len(pending)} actions dropped")
                pending = []
            if (self.until_settled or not pending) and not self.restarting and settled(self.model):
                return False
            run_for = self.scenario.run_for
            if run_for is not None and time.monotonic() - started - self._paused >= run_for:
                return False  # the scenario's length, for work that never settles
            time.sleep(self.SAMPLE)
        return True

    def _result(self, timed_out: bool) -> RunResult:
        """The figures as the model summed the run up (``tui.model.runs``: one home for compare and the dashboard)."""
        model = self.model
        ledger = model.ledger
        run = model.runs.latest
        figures = [] if run is None else [replace(w, labels=list(w.labels)) for w in run.workers]
        return RunResult(
            scenario=self.scenario.name,
            mode=self.mode,
            workers=figures,
            makespan=0.0 if run is None else run.makespan,
            published=ledger.confirmed,
            done=ledger.done_messages,
            redeliveries=ledger.redeliveries,
            lost=ledger.lost,
            duplicates=ledger.duplicates,
            checks=check(self.scenario, model),
            timed_out=timed_out,
            model=model,
            kills=self.kills,
            broker_restarts=self.broker_restarts,
            on_fail=self.on_fail,
            queue=self.spec,
            broker_version=model.broker_version,
        )


__all__ = ["DONE", "Check", "RunResult", "ScenarioRun", "WorkerFigures", "check", "random_kills"]
