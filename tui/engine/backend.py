"""Provides the lab's backend: the one door for commands, and the factory that builds its pipeline.

A pipeline is the worker pool, the broker monitor and the publisher, with one
inbox for what their threads learn, as observations; the app (or a headless
run) drains the inbox and folds it into the model. ``build_pipeline`` wires it
for the dashboard, the headless runner and the benchmarks alike. ``Backend``
owns one and carries out every command (add, kill, stop, restart, set mode,
publish, purge, restart the broker); the keys, the palette, scenarios and the
headless runner all go through it. A replay or a snapshot runs the app with no
backend at all.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tui.engine.pool import Inbox, PoolClosed, WorkerPool
from tui.engine.remote import RemoteWorkers
from tui.model import observations as obs
from tui.text import for_toast
from workers import protocol
from workers.broker import ConsumerInfo, ManagementApi
from workers.control import ControlSender, Unreached
from workers.dead_letters import DeadLetter, DeadLetterWatcher
from workers.local_node import LocalNode, LocalNodeError
from workers.monitor import PublisherThread, QueueMonitor
from workers.new_task import new_session_prefix
from workers.report import ReportFeed
from workers.settings import AckMode, DispatchMode, FailMode, QueueSpec, mask_url

ROUND_ROBIN = DispatchMode(prefetch=0, ack=AckMode.MANUAL)
_OUR_CONNECTION = re.compile(r"^dispatch-lab (?P<name>\S+) \(pid (?P<pid>\d+)\)$")


@dataclass(frozen=True)
class LabConfig:
    """What the dashboard was asked to run."""

    url: str
    queue: str = "task_queue"
    workers: int = 2
    mode: DispatchMode = ROUND_ROBIN
    seconds_per_dot: float = 1.0
    spec: QueueSpec = field(default_factory=QueueSpec)
    """How every program of this lab declares the work queue: durable, its type, delivery limit, dead letters."""
    persistent: bool = True
    heartbeat: int | None = None
    management_url: str | None = None
    private_broker: bool = False
    runs_dir: Path | None = None
    """Where Ctrl+S saves sessions; None: runs/ in the current folder."""
    hear_reports: bool = True
    """Subscribe to the events exchange: workers started elsewhere with ``--report`` show as remote cards."""
    report: bool = False
    """Our workers report through the broker too, so that watching dashboards (``serve`` tabs) see them."""
    watch_only: bool = False
    """A viewer: no workers of its own, and every command that changes anything is refused."""
    on_fail: FailMode = FailMode.REQUEUE
    """What the workers do with a failing task (a body with '!')."""
    ack_timeout: float | None = None
    """The broker's consumer_timeout in seconds, when known: set on the private node, or told (--ack-timeout)."""
    ack_timeout_source: str = ""
    broker_version: str = ""
    """As the broker announced it at the preflight connection; "" when not asked."""

    @property
    def durable(self) -> bool:
        return self.spec.durable

    def session_started(self, prefix: str) -> obs.SessionStarted:
        """The session log's first line: the queue, the mode and what the broker is, as this lab runs them."""
        spec = self.spec
        return obs.SessionStarted(
            time.time(), self.queue, prefix, self.mode.prefetch, self.mode.ack, spec.durable, mask_url(self.url),
            self.on_fail.value, spec.type.value, spec.delivery_limit, spec.dead_letter, self.broker_version,
            self.ack_timeout, self.ack_timeout_source,
        )  # fmt: skip


@dataclass(frozen=True)
class Refused:
    """A command the backend did not carry out, and why (one sentence for the user)."""

    reason: str


@dataclass(frozen=True)
class Pipeline:
    """Workers, queue monitor and publisher of one lab, and the inbox all three report to."""

    inbox: Inbox
    pool: WorkerPool
    monitor: QueueMonitor
    publisher: PublisherThread
    prefix: str
    """The publisher's message id prefix: the model tells our tasks from others' by it."""
    remote: RemoteWorkers | None = None
    feed: ReportFeed | None = None
    """The events exchange's subscriber, when the config hears reports."""
    dead_letters: DeadLetterWatcher | None = None
    """Watches ``<queue>.dead`` when the queue has one."""
    control: ControlSender | None = None
    """Sends commands to remote workers that accept them, when the config hears reports and may change things."""


def build_pipeline(
    config: LabConfig, *, management: ManagementApi | None = None, inbox: Inbox | None = None
) -> Pipeline:
    """The one place that wires a pipeline; nothing is started. ``inbox``: one of the caller's (a benchmark's tap)."""
    inbox = Inbox() if inbox is None else inbox
    prefix = new_session_prefix()
    pool = WorkerPool(
        config.url,
        config.queue,
        inbox,
        mode=config.mode,
        seconds_per_dot=config.seconds_per_dot,
        durable=config.durable,
        heartbeat=config.heartbeat,
        report=config.report,
        queue_spec=config.spec,
        on_fail=config.on_fail,
    )
    remote = feed = control = None
    if config.hear_reports:
        remote = RemoteWorkers(inbox, lambda name: pool.get(name) is not None)
        feed = ReportFeed(config.url, config.queue, remote.heard)
        if not config.watch_only:
            control = ControlSender(config.url, config.queue)
    report = InboxReport(inbox, pool, management, remote)
    monitor = QueueMonitor(config.url, config.queue, report, management=management)
    publisher = PublisherThread(
        config.url,
        config.queue,
        report,
        prefix=prefix,
        durable=config.durable,
        persistent=config.persistent,
    )
    publisher.publisher.queue_spec = config.spec  # declared with the workers' arguments, or the broker refuses
    dead_queue = config.spec.dead_letter_queue(config.queue)
    watcher = None if dead_queue is None else DeadLetterWatcher(config.url, dead_queue, config.queue, report)
    return Pipeline(inbox, pool, monitor, publisher, prefix, remote, feed, watcher, control)


class Backend:
    """Everything with a thread or a process behind it, and the only door for commands.

    Commands come from the UI thread (keys, palette, scenarios' timers) or a headless
    run's thread; none blocks. What takes time (a restart waiting for its worker to
    go, a broker restart) runs on a thread of its own and reports through callbacks,
    which are called on that thread.
    """

    RESTART_WAIT = 60.0
    """Seconds a restarted worker may take to finish its task before the restart gives up."""

    def __init__(
        self,
        config: LabConfig,
        *,
        management: ManagementApi | None = None,
        node: LocalNode | None = None,
        pipeline: Pipeline | None = None,
    ) -> None:
        """``node``: the private broker ``config.url`` points at, which ``restart_broker`` restarts."""
        self.config = config
        self.node = node
        pipeline = build_pipeline(config, management=management) if pipeline is None else pipeline
        self.inbox = pipeline.inbox
        self.pool = pipeline.pool
        self.monitor = pipeline.monitor
        self.publisher = pipeline.publisher
        self.prefix = pipeline.prefix
        self.remote = pipeline.remote
        self.feed = pipeline.feed
        self.dead_letters = pipeline.dead_letters
        self.control = pipeline.control
        self._started = False
        self._shutdown_lock = threading.Lock()
        self._submitted = 0
        """Tasks handed to the publisher so far: it numbers them 1, 2, ... in that order (``Publisher.next_id``)."""

    def start(self) -> None:
        if self.feed is not None:
            self.feed.start()
        if self.control is not None:
            self.control.start()  # it connects at its first command: a lab without remote workers opens nothing
        self.monitor.start()
        self.publisher.start()
        if self.dead_letters is not None:
            self.dead_letters.start()
        self.pool.spawn_in_order(self.config.workers)
        self._started = True

    def shutdown(self) -> None:
        """Stop workers, publisher and monitor; safe to call twice, from any thread."""
        with self._shutdown_lock:
            if not self._started:
                return
            self._started = False
            self.publisher.cancel()
            self.pool.shutdown()
            self.publisher.stop()
            self.monitor.stop()
            if self.feed is not None:
                self.feed.stop()
            if self.control is not None:
                self.control.stop()
            if self.dead_letters is not None:
                self.dead_letters.stop()

    # ----- commands (from the UI thread or a headless run; all non-blocking)

    def add_worker(self, name: str | None = None) -> str | Refused:
        """Start a worker (a new one, or again under an old name); its name, or why not."""
        if len(self.pool.running()) >= self.pool.MAX_WORKERS:
            return Refused(f"At most {self.pool.MAX_WORKERS} workers.")
        return self.pool.spawn(name)

    def kill(self, name: str) -> bool:
        """SIGKILL, like a crash; False when it is not running."""
        return self.pool.kill(name)

    def stop(self, name: str) -> bool:
        """Finish the current task, then exit; False when it is not running."""
        return self.pool.stop(name)

    def stop_remote(self, name: str, unreached: Unreached) -> Refused | None:
        """Ask a worker on another machine to finish its task and exit, over the control exchange.

        Refused when it did not say it accepts control; ``unreached`` hears (on the sender's
        thread) when the broker had nowhere to route the command.
        """
        if self.control is None or self.remote is None:
            return Refused("This dashboard sends no commands to remote workers (it does not hear their reports).")
        if not self.remote.accepts_control(name):
            return Refused(not_accepting(name))
        self.control.send([name], protocol.Stop(), unreached)
        return None

    def _tell_remote(self, names: Sequence[str], command: protocol.Command, unreached: Unreached | None) -> list[str]:
        """Send ``command`` to those of the remote workers named that accept control; the names of the others."""
        remote, control = self.remote, self.control
        told = [] if remote is None or control is None else [n for n in names if remote.accepts_control(n)]
        if told and control is not None:
            control.send(told, command, unreached or _nobody)
        return [name for name in names if name not in told]

    def restart(self, name: str, gave_up: Callable[[], None]) -> None:
        """Stop a worker and start it again under its name once its process is gone.

        A worker that is not running starts at once. One still busy after RESTART_WAIT
        seconds stays stopping and is not started again: ``gave_up`` is called (on the
        waiting thread).
        """
        worker = self.pool.get(name)
        if worker is None or name not in self.pool.running():
            self.pool.spawn(name)
            return
        self.pool.stop(name)

        def respawn_when_gone() -> None:
            # Its exit reported, not only its process reaped: the pool reports the exit after the last
            # stderr lines, and a new w1 spawned in between was marked exited by the old one's WorkerExited.
            if not worker.exit_reported.wait(self.RESTART_WAIT):  # still finishing its task
                gave_up()
                return
            try:
                self.pool.spawn(name)
            except PoolClosed:
                pass  # the lab is closing: nothing to restart

        threading.Thread(target=respawn_when_gone, name=f"restart-{name}", daemon=True).start()

    @property
    def mode(self) -> DispatchMode:
        """The mode last asked for: the model hears of it only when it folds the request."""
        return self.pool.mode

    def set_mode(self, mode: DispatchMode, remote: Sequence[str] = (), unreached: Unreached | None = None) -> list[str]:
        """Every worker of ours in ``mode``, and the ``remote`` workers named that accept control; the others' names.

        ``unreached`` hears (on the sender's thread) of remote workers the command could not reach.
        """
        self.inbox.put(obs.ModeRequested(time.time(), mode.prefetch, mode.ack))
        self.pool.set_mode(mode)
        return self._tell_remote(remote, protocol.SetMode(mode.prefetch, mode.ack), unreached)

    @property
    def on_fail(self) -> FailMode:
        """The failure mode last asked for."""
        return self.pool.on_fail

    def set_fail_mode(
        self, on_fail: FailMode, remote: Sequence[str] = (), unreached: Unreached | None = None
    ) -> list[str]:
        """What every worker does with a failing task from its next failure on (new workers start in it).

        The ``remote`` workers named hear it too when they accept control (see ``set_mode``); the others' names.
        """
        self.inbox.put(obs.FailModeRequested(time.time(), on_fail.value))
        self.pool.set_fail_mode(on_fail)
        return self._tell_remote(remote, protocol.SetFailMode(on_fail.value), unreached)

    def move_dead_letters_back(self) -> Refused | None:
        """Every dead letter back to the work queue, for another try (reported as DeadLettersMoved)."""
        if self.dead_letters is None:
            return Refused("This queue has no dead-letter queue: start with --dead-letter.")
        self.dead_letters.move_back()
        return None

    def publish(self, bodies: list[str]) -> None:
        self._submitted += len(bodies)
        self.publisher.submit(bodies)

    def publish_run(self, name: str, bodies: list[str]) -> None:
        """Publish a preset or scenario as a run: the model numbers its tasks from 1 and sums it up when it ends.

        ``RunStarted`` goes into the inbox before the publisher can report the first of
        its tasks, and names them by the publisher's numbers (the next ones it hands out).
        """
        mode = self.mode
        self.inbox.put(obs.RunStarted(time.time(), name, self._submitted + 1, len(bodies), mode.prefetch, mode.ack))
        self.publish(bodies)

    def purge(self) -> None:
        self.monitor.purge()

    @property
    def tasks_survive_restart(self) -> bool:
        """A durable queue and persistent messages: what the broker held comes back after a restart."""
        return self.config.durable and self.config.persistent

    def restart_broker(self, done: Callable[[float], None], failed: Callable[[str], None]) -> threading.Thread | None:
        """Stop and start the private node on a thread; None when there is none (a broker we did not start).

        ``done`` gets the seconds it took, ``failed`` the node's one-sentence error; both
        are called on that thread. The inbox hears ``BrokerRestarted`` before ``done`` runs.
        """
        node = self.node
        if node is None:
            return None

        def restart() -> None:
            began = time.monotonic()
            try:
                node.restart()
            except LocalNodeError as exc:
                failed(str(exc))
                return
            seconds = time.monotonic() - began
            self.inbox.put(obs.BrokerRestarted(time.time(), self.tasks_survive_restart, seconds, self.config.durable))
            done(seconds)

        thread = threading.Thread(target=restart, name="broker-restart", daemon=True)
        thread.start()
        return thread


def not_accepting(name: str) -> str:
    """Why a remote worker takes no command, and what to do (one sentence)."""
    return (
        f"{for_toast(name)} was started without --accept-control, so it takes no commands from a dashboard: "
        "stop it where it runs (Ctrl+C there), or start it again with --report --accept-control."
    )


def _nobody(names: list[str], why: str) -> None:
    """Nobody to tell that a command did not reach these workers (a caller that did not ask)."""


class InboxReport:
    """The monitor's and publisher's listener: what their threads learn goes into the inbox as observations."""

    def __init__(
        self,
        inbox: Inbox,
        pool: WorkerPool,
        management: ManagementApi | None = None,
        remote: RemoteWorkers | None = None,
    ) -> None:
        self.inbox = inbox
        self.pool = pool
        """Whose workers are ours: the others' consumers are told apart by the pool's pids."""
        self.remote = remote
        """Workers that report to us through the broker: their consumers have cards, they are not others."""
        self.management = management
        self._refusal: str | None = None
        """The management API's refusal as last reported to the model."""

    # ----- MonitorListener: called from the monitor's and publisher's threads

    def queue_sampled(
        self,
        ts: float,
        ready: int,
        consumers: int,
        unacked: int | None,
        external: Sequence[ConsumerInfo] | None,
    ) -> None:
        api = self.management
        if api is not None and api.refusal != self._refusal:
            # Said once per change, before the first sample that goes without the API's figures.
            self._refusal = api.refusal
            self.inbox.put(obs.ManagementChecked(ts, api.describe(), api.refusal or ""))
        others: tuple[obs.ExternalConsumer, ...] | None = None
        if external is not None:
            ours = {str(pid) for pid in self.pool.pids()}
            reporting = set() if self.remote is None else self.remote.names()
            others = tuple(
                obs.ExternalConsumer(
                    c.connection_name, c.prefetch, c.ack_required, c.unacked, c.channel, c.delivered, c.acked
                )
                for c in external
                if not _is_ours(c.connection_name, ours, reporting)
            )
        self.inbox.put(obs.QueueSample(ts, ready, consumers, unacked, others))

    def broker_status(self, ts: float, state: str, attempt: int, message: str) -> None:
        self.inbox.put(obs.BrokerStatus(ts, state, attempt, message))

    def queue_purged(self, ts: float, count: int) -> None:
        self.inbox.put(obs.Purged(ts, count))

    def task_published(self, ts: float, msg_id: str, body: str) -> None:
        self.inbox.put(obs.Published(msg_id, ts, body))

    def task_confirmed(self, ts: float, msg_id: str) -> None:
        self.inbox.put(obs.Confirmed(msg_id, ts))

    def task_failed(self, ts: float, msg_id: str, message: str) -> None:
        self.inbox.put(obs.PublishFailed(msg_id, ts, message))

    def task_republished(self, ts: float, msg_id: str, reason: str) -> None:
        self.inbox.put(obs.Republished(msg_id, ts, reason))

    def publisher_blocked(self, ts: float, reason: str) -> None:
        self.inbox.put(obs.PublisherBlocked(ts, reason))

    def publisher_unblocked(self, ts: float) -> None:
        self.inbox.put(obs.PublisherUnblocked(ts))

    # ----- DeadLetterListener: called from the dead-letter watcher's thread

    def dead_letters_sampled(self, ts: float, queue: str, count: int, letters: list[DeadLetter]) -> None:
        seen = tuple(obs.DeadLetterSeen(d.msg_id, d.reason, d.times, d.body) for d in letters)
        self.inbox.put(obs.DeadLettersSampled(ts, queue, count, seen))

    def dead_letters_moved(self, ts: float, queue: str, ids: list[str], error: str) -> None:
        self.inbox.put(obs.DeadLettersMoved(ts, queue, tuple(ids), error))


def _is_ours(connection_name: str, pids: set[str], reporting: set[str] | frozenset[str] = frozenset()) -> bool:
    """A connection of our pool's workers (by pid), of a worker reporting to us (by name), or of this dashboard."""
    match = _OUR_CONNECTION.match(connection_name)
    if match and (match["pid"] in pids or match["name"] in reporting):
        return True
    return connection_name.startswith("dispatch-lab monitor")


class FeedBackend:
    """Stands in for the backend with an inbox alone: what is put in it gets folded, nothing is started.

    For benchmarks and tests that feed the dashboard recorded or made-up arrivals.
    """

    def __init__(self) -> None:
        self.inbox = Inbox()
        self.node: LocalNode | None = None
        """No broker of its own: the broker-restart key stays hidden."""

    def start(self) -> None:
        pass

    def shutdown(self) -> None:
        pass
