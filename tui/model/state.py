"""Provides the dashboard's pure model: workers, queue figures and the ledger, folded from events.

``Model.apply`` takes worker protocol events and the observations of
``tui.model.observations`` in the order they happened; widgets only read the model.
Nothing here imports Textual or touches the network, so tests replay lists.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from tui.model import observations as obs
from tui.model.ledger import (
    AFTER_LOST_LINK,
    DONE,
    HELD,
    LOST,
    PURGED,
    READY,
    TAKEN_BACK,
    TERMINAL,
    UNACKED_DONE,
    Ledger,
    LostCause,
    MessageRecord,
)
from tui.model.others import OtherConsumers
from tui.model.runs import Run, Runs
from workers import protocol
from workers.settings import (
    DEFAULT_CONSUMER_TIMEOUT,
    AckMode,
    DispatchMode,
    FailMode,
    QueueSpec,
    QueueType,
    SettingsError,
    check_ack,
    check_fail,
    consumer_timeout_applies,
    effective_delivery_limit,
    parse_version,
)

STALE_AFTER = 2.0
"""Seconds after which a broker figure is shown as stale."""
FROM_MANAGEMENT = "management API, ~5 s behind"
DERIVED = "derived: worker events"
"""Where the unacked figure came from, as the queue panel says it."""
ATTACHED_SLACK = 2.0
"""Seconds before a shortfall began in which other consumers seen attached may have taken it."""
UNRESPONSIVE_AFTER = 3.0
"""Seconds without an event (workers say ``alive`` every second) before a worker counts as hung."""
MGMT_LAG = 7.0
"""Seconds the management API's message stats trail reality (its collection interval is 5 s)."""
VANISH_QUIET = 1.5
"""Seconds of stillness before ready tasks missing from an empty queue count as lost unseen."""
TAKEN_SETTLE = 1.5
"""Seconds the broker's queue must hold fewer than our ready tasks, with nothing moving at our end, before
the missing ones count as taken by another consumer: a delivery to one of ours is reported well within that."""
REPORT_MARGIN = 0.5
"""Seconds past a shortfall's start by which each worker of ours must have spoken (a delivery's way to it)."""
DERIVED_IGNORED = "derived; mgmt API ignored"
"""The unacked source when the management API answers for another broker (the reason is shown below)."""

LOG_LINES = 6
LANE_BLOCKS = 400
RATE_SECONDS = 60


class WorkerStatus(str, Enum):
    """Where a worker is, as its events and the pool's tell: what the card shows and the figures count."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    KILLED = "killed"
    EXITED = "exited"
    RECONNECTING = "reconnecting"
    CANCELLED = "cancelled"
    """The broker cancelled the worker's consumer (its queue was deleted); it declares the queue again."""
    CHANNEL_CLOSED = "channel closed"
    """The broker closed the worker's channel (an ack timeout); it consumes again on a new one."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def alive(self) -> bool:
        """The process runs (whatever its link to the broker)."""
        return self not in (WorkerStatus.KILLED, WorkerStatus.EXITED)

    @property
    def consuming(self) -> bool:
        """Alive and counted by the broker as a consumer on the queue."""
        return self.alive and self not in _NOT_CONSUMING

    @property
    def broker_stepped_in(self) -> bool:
        """Alive, but the broker took its consumer or channel away until it consumes again."""
        return self in (WorkerStatus.CANCELLED, WorkerStatus.CHANNEL_CLOSED)


STARTING, IDLE, BUSY, STOPPING, KILLED, EXITED, RECONNECTING, CANCELLED, CHANNEL_CLOSED = WorkerStatus
_NOT_CONSUMING = frozenset({STARTING, STOPPING, CANCELLED, CHANNEL_CLOSED})
QUEUE_DELETED = "queue deleted; consumer cancelled by the broker"


@dataclass(slots=True)
class Block:
    """One task on a worker's timeline lane."""

    start: float
    end: float | None
    label: str
    redelivered: bool
    outcome: str = ""


@dataclass(slots=True)
class CurrentTask:
    """The task a worker is working on."""

    tag: int
    label: str
    body: str
    started: float
    seconds: float
    delivered: float = 0.0
    """When the broker delivered it: its acknowledgement deadline counts from there, not from the start."""
    deadline: float | None = None
    """The broker's acknowledgement timeout (seconds from delivery) when the task is acked after the work."""
    deadline_source: str = ""


@dataclass(slots=True)
class WorkerState:
    """One worker as its events describe it."""

    name: str
    pid: int | None = None
    status: WorkerStatus = STARTING
    exit_code: int | None = None
    prefetch: int | None = None
    ack: AckMode | None = None
    received: int = 0
    done: int = 0
    returned: int = 0
    redelivered: int = 0
    restarts: int = 0
    garbage: int = 0
    held: dict[int, MessageRecord] = field(default_factory=dict)
    unacked_done: dict[int, MessageRecord] = field(default_factory=dict)
    current: CurrentTask | None = None
    log: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=LOG_LINES))
    stderr: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=LOG_LINES))
    lane: collections.deque[Block] = field(default_factory=lambda: collections.deque(maxlen=LANE_BLOCKS))
    last_seen: float = 0.0
    stop_requested: bool = False
    kill_requested: bool = False
    heartbeat: int = 0
    connection_attempt: int = 0
    ack_lost: int = 0
    """Tasks it finished after the broker had taken them back (ack timeout): worked, never acked."""
    finishing: CurrentTask | None = None
    """The task it still works on though the broker took it back; it consumes again once done."""
    taken_back: dict[int, MessageRecord] = field(default_factory=dict)
    """Those tasks' records, by tag, until their ``ack_lost``."""
    closed_by_broker: str = ""
    """The broker's words when it last closed this worker's channel or connection."""
    remote: bool = False
    """Not a process of this dashboard: it reports through the broker (``worker --report``), from ``host``."""
    host: str = ""
    control: bool = False
    """A remote worker that obeys commands sent on the control exchange (``--accept-control``), as it said."""
    dropped: int = 0
    """Events a remote worker dropped rather than slow its work (it says how many): its counts miss them."""
    exited_at: float | None = None
    """When its process was last seen to end (killed or exited); None while it runs."""
    failed: int = 0
    """Tasks that failed in its hands (their body holds '!')."""
    on_fail: FailMode | None = None
    """What it does with a failing task, as it last said (ready, on_fail)."""

    @property
    def alive(self) -> bool:
        return self.status.alive

    @property
    def in_hand(self) -> int:
        """Deliveries inside the worker process: received, not yet done or given back."""
        return len(self.held)

    @property
    def unacked(self) -> int:
        """This worker's share of the broker's unacked count."""
        if not self.alive:
            return 0
        # Each delivery keeps the ack mode it was made under: a live switch leaves old ones as they were.
        # A delivery of a deleted queue stays unacked on its channel, not in the queue this figure is about.
        manual = sum(1 for r in self.held.values() if not r.deliveries or r.deliveries[-1].in_queue_unacked)
        return manual + len(self.unacked_done)

    def silent_for(self, now: float) -> float | None:
        """Seconds without any sign of life from a live worker (None when it is dead or never seen).

        Workers say ``alive`` every second, so a few silent seconds mean it is hung
        (SIGSTOP, a frozen VM): the broker notices only after about 2 x heartbeat.
        """
        if not self.alive or not self.last_seen or self.status in (STARTING, STOPPING):
            return None
        silent = now - self.last_seen
        return silent if silent > UNRESPONSIVE_AFTER else None

    def dropped_in(self, now: float) -> float | None:
        """Seconds until the broker should drop a silent worker's connection, if known."""
        if self.silent_for(now) is None or not self.heartbeat:
            return None
        return max(0.0, 2 * self.heartbeat - (now - self.last_seen))

    def held_delivery(self, tag: int, msg_id: str | None) -> tuple[int, MessageRecord] | None:
        """The key in ``held`` and the record of the delivery an event with this tag and message id is about.

        Tags restart at 1 on each new channel, so after a reconnect an auto-ack task
        kept across the lost connection can share its tag with a new delivery; the
        older one was moved to a negative key when the newer arrived, and the
        message id tells them apart. The common answer (this tag, this message) comes
        first: a flood asks for every task.
        """
        record = self.held.get(tag)
        if record is not None and (msg_id is None or record.msg_id == msg_id):
            return tag, record
        for key, other in self.held.items():
            if key < 0 and other.msg_id == msg_id:
                return key, other
        return (tag, record) if record is not None else None

    def release(self, tag: int, msg_id: str | None) -> MessageRecord | None:
        """Take the delivery ``held_delivery`` names out of ``held`` (done or given back); its record, if any."""
        found = self.held_delivery(tag, msg_id)
        if found is None:
            return None
        del self.held[found[0]]
        return found[1]

    @property
    def waiting(self) -> int:
        """Deliveries held behind the current task (the prefetch window at work)."""
        return max(0, len(self.held) - (1 if self.current else 0))


@dataclass(slots=True)
class DeadLetterView:
    """The dead-letter queue as the broker has it, and what was moved back from it."""

    queue: str = ""
    count: int | None = None
    """Ready in it (a passive declare); None until sampled."""
    sampled: float | None = None
    letters: tuple[obs.DeadLetterSeen, ...] = ()
    """The first of them, read (and left there): ids and the broker's reasons."""
    moved: int = 0
    """Moved back to the work queue by this dashboard."""
    error: str = ""


@dataclass(slots=True)
class QueueView:
    """The queue's figures and where each came from."""

    ready: int | None = None
    consumers: int | None = None
    sampled: float | None = None
    mgmt_unacked: int | None = None
    mgmt_sampled: float | None = None
    external: tuple[obs.ExternalConsumer, ...] | None = None
    mgmt_refused: str = ""
    """Why the management API's figures are ignored (it answers for another broker), or empty."""


class Model:
    """Everything the dashboard shows, folded from events."""

    def __init__(
        self,
        *,
        queue: str = "task_queue",
        mode: DispatchMode | None = None,
        prefix: str | None = None,
        ledger_cap: int | None = None,
        spec: QueueSpec | None = None,
        on_fail: FailMode = FailMode.REQUEUE,
        broker_version: str = "",
        ack_timeout: float | None = None,
        ack_timeout_source: str = "",
    ) -> None:
        self.queue_name = queue
        self.mode = mode or DispatchMode()
        self.on_fail = FailMode(on_fail)
        """The failure mode last asked for (every worker's, live)."""
        self.spec = spec or QueueSpec()
        """How the work queue is declared: its type, delivery limit, dead-letter queue."""
        self.broker_version = broker_version
        """As the broker announced it, or "" (a replay of an older log, a run that did not ask)."""
        self.ack_timeout = ack_timeout
        self.ack_timeout_source = ack_timeout_source
        """Where the known consumer_timeout comes from (``set on the private node``, ``--ack-timeout``)."""
        self.fail_per_second: collections.deque[tuple[int, int]] = collections.deque(maxlen=RATE_SECONDS)
        self.last_failure = 0.0
        """When a task last failed: a requeue loop puts it back and takes it out faster than any sample tells."""
        self.dead = DeadLetterView()
        self.workers: dict[str, WorkerState] = {}
        self.queue = QueueView()
        self.ledger = Ledger(prefix=prefix) if ledger_cap is None else Ledger(ledger_cap, prefix)
        self.broker_state = "connecting"
        self.broker_attempt = 0
        self.broker_message = ""
        self.broker_since = 0.0
        self.broker_restarts = 0
        self.events = 0
        self.garbage = 0
        self.last_error = ""
        self.done_per_second: collections.deque[tuple[int, int]] = collections.deque(maxlen=RATE_SECONDS)
        self.first_ts: float | None = None
        self.baseline = 0
        self.broker = ""
        self.durable = True
        self.last_activity = 0.0
        """When a task last moved (delivered, finished, given back, lost with its worker)."""
        self.last_auto_death: float | None = None
        """When a worker in auto ack last died: what the broker had written to its socket is gone."""
        self.others = OtherConsumers()
        """Consumers on our queue that this dashboard does not run, and what they took."""
        self._missing: tuple[float, int] | None = None
        """Since when the broker's queue has held fewer than our ready tasks, and the least it was short by."""
        self.publish_blocked: str | None = None
        """The broker's reason while it blocks our publisher (a memory or disk alarm), else None."""
        self.publish_blocked_since = 0.0
        self.publish_failure: tuple[str, str] | None = None
        """The last failed publish: its task's label and why, in the publisher's words (the broker's reason)."""
        self.queue_deleted_at: float | None = None
        """When a worker last found the queue deleted under its consumer (basic.cancel)."""
        self.cancelled: dict[str, bool] = {}
        """Workers whose consumer the broker cancelled lately, and whether each consumes again."""
        self.cancelled_at: float | None = None
        """When the broker last cancelled one of our consumers; cancels within seconds of it are the same step."""
        self.cancel_note = ""
        """What that step was, in words: the queue deleted, or a cancel for a reason no worker could see."""
        self.broker_closed: tuple[float, str, str] | None = None
        """When the broker last closed one of our channels or connections, whose, and its words."""
        self.runs = Runs()
        """Presets and scenarios published as runs: their tasks numbered from 1, their figures."""
        self._runs_losses = 0
        """The ledger's losses when the runs' open tasks were last looked at after news about many tasks."""
        self._configure()

    def _configure(self) -> None:
        """Tell the ledger what the queue does with returns: its delivery limit and dead-letter target."""
        spec = self.spec
        self._version = parse_version(self.broker_version)
        self._deadline = self._find_ack_deadline()
        limit, _ = effective_delivery_limit(spec, self._version)
        ledger = self.ledger
        ledger.delivery_limit = limit
        ledger.counts_deliveries = spec.type.counts_deliveries
        ledger.dead_target = spec.dead_letter
        self.dead.queue = spec.dead_letter_queue(self.queue_name) or ""

    def set_broker_version(self, version: str) -> None:
        """The broker's version as it announced it: the delivery limit and the ack deadline may depend on it."""
        self.broker_version = version
        self._configure()

    @property
    def version(self) -> tuple[int, ...] | None:
        """The broker's version as numbers, or None when unknown."""
        return self._version

    def delivery_limit(self) -> tuple[int | None, str]:
        """The delivery limit the broker enforces on the queue, and where that comes from."""
        return effective_delivery_limit(self.spec, self.version)

    def ack_deadline(self) -> tuple[float | None, str]:
        """The broker's acknowledgement timeout in seconds and how we know it (worked out once per setting)."""
        return self._deadline

    def _find_ack_deadline(self) -> tuple[float | None, str]:
        """The broker's acknowledgement timeout in seconds and how we know it; None when it sets none.

        Known when this dashboard set it (its private node) or was told (--ack-timeout);
        otherwise RabbitMQ's default, said to be assumed. RabbitMQ 4.3 stopped timing out
        deliveries on classic queues (release notes; not tested here, the broker is 3.10).
        """
        if not consumer_timeout_applies(self.spec.type, self._version):
            return None, "none on classic queues since RabbitMQ 4.3"
        if self.ack_timeout is not None:
            return self.ack_timeout, self.ack_timeout_source or "told"
        return DEFAULT_CONSUMER_TIMEOUT, "assumed: RabbitMQ's default"

    # ----- folding

    def apply_all(self, items: Iterable[obs.Observation]) -> None:
        """Fold items in order: the same as ``apply`` on each."""
        self._fold(items)

    def apply(self, item: obs.Observation) -> None:
        self._fold((item,))

    def _fold(self, items: Iterable[obs.Observation]) -> None:
        # A flood folds tens of thousands of events a second on the UI thread: one loop
        # with its lookups in locals, and the count added once (a handler that raises
        # has its item counted, as before).
        handlers, moves, runs = _HANDLERS, _MOVES, self.runs
        count = 0
        try:
            for item in items:
                count += 1
                kind = type(item)
                handler = handlers.get(kind)
                if handler is not None:
                    if runs.active:
                        self._runs_tick(item.ts)
                    handler(self, item)
                    if kind in moves:
                        self.last_activity = item.ts
                    if runs.active and kind in _RUN_NEWS:
                        self._runs_heard(item)
        finally:
            self.events += count

    def _worker(self, name: str) -> WorkerState:
        state = self.workers.get(name)
        if state is None:
            state = self.workers[name] = WorkerState(name)
        return state

    def _on_spawned(self, e: obs.WorkerSpawned) -> None:
        w = self._worker(e.worker)
        if w.pid is not None:
            w.restarts += 1
        w.pid, w.status, w.exit_code = e.pid, STARTING, None
        w.stop_requested = w.kill_requested = False
        w.stderr.clear()
        if self.first_ts is None:
            self.first_ts = e.ts

    def _on_remote_heard(self, e: obs.RemoteWorkerHeard) -> None:
        w = self._worker(e.worker)
        w.remote, w.host, w.control = True, e.host, e.control
        if w.pid is not None and w.pid != e.pid:
            w.restarts += 1  # the same name again from a new process: the same card
        w.pid = e.pid
        if not w.alive or w.status is STARTING:
            # It runs already (a dashboard may come after its ``ready``): what it says next tells more.
            w.status, w.exit_code = IDLE, None
        w.last_seen = e.ts
        if self.first_ts is None:
            self.first_ts = e.ts

    def _on_dropped(self, e: protocol.Dropped) -> None:
        w = self._worker(e.worker)
        w.dropped, w.last_seen = e.count, e.ts

    def _on_ready(self, e: protocol.Ready) -> None:
        w = self._worker(e.worker)
        w.pid, w.prefetch, w.ack, w.last_seen = e.pid, e.prefetch, _ack(e.ack), e.ts
        w.on_fail = _fail(e.on_fail)
        if w.status in (CANCELLED, CHANNEL_CLOSED):
            w.log.append(
                " [*] queue declared again; consuming" if w.status == CANCELLED else " [*] new channel; consuming"
            )
            if e.worker in self.cancelled:
                self.cancelled[e.worker] = True
            w.status = BUSY if w.current else IDLE
            return
        if w.status in (STARTING, RECONNECTING):
            w.status = BUSY if w.current else IDLE
        w.log.append(" [*] Waiting for messages. To exit press CTRL+C")

    def _on_received(self, e: protocol.Received) -> None:
        w = self._worker(e.worker)
        w.received += 1
        w.last_seen = e.ts
        if e.redelivered:
            w.redelivered += 1
        record = self.ledger.received(
            e.msg_id, e.body, e.worker, e.ts, e.redelivered, w.ack or AckMode.MANUAL, e.delivery_count
        )
        held, tag = w.held, e.tag
        if tag in held:  # the same tag on a new channel: see WorkerState.held_delivery
            kept = held.pop(tag)
            held[min([0, *held]) - 1] = kept
        held[tag] = record

    def _on_alive(self, e: protocol.Alive) -> None:
        w = self._worker(e.worker)
        w.last_seen, w.heartbeat = e.ts, e.heartbeat
        # Its mode as it is now (newer workers say it each second): a dashboard that missed its ready learns it.
        if e.prefetch is not None and e.ack is not None:
            w.prefetch, w.ack = e.prefetch, _ack(e.ack)
        if e.on_fail is not None:
            w.on_fail = _fail(e.on_fail)

    def _on_started(self, e: protocol.Started) -> None:
        w = self._worker(e.worker)
        ts, tag = e.ts, e.tag
        w.last_seen = ts
        found = w.held_delivery(tag, e.msg_id)
        record = None if found is None else found[1]
        delivered = ts
        if record is None:
            body, label, redelivered = "", f"tag {tag}", False
        else:
            body, label = record.body, record.label()
            deliveries = record.deliveries
            last = deliveries[-1] if deliveries else None
            if last is not None and last.worker == e.worker:
                last.started = ts
                delivered = last.ts
            redelivered = last is not None and last.redelivered
        w.current = CurrentTask(tag, label, body, ts, e.seconds, delivered)
        if w.ack is None or w.ack.unacked_while_held:
            w.current.deadline, w.current.deadline_source = self.ack_deadline()
        if w.status == IDLE:
            w.status = BUSY
        w.log.append(f" [x] Received {body!r}")
        w.lane.append(Block(ts, None, label if record is None else record.short_label(), redelivered))

    def _on_done(self, e: protocol.Done) -> None:
        w = self._worker(e.worker)
        ts, tag = e.ts, e.tag
        w.done += 1
        w.last_seen = ts
        record = w.release(tag, e.msg_id)
        if record is not None:
            self.ledger.done(record, ts, e.acked, e.worker)
            if not e.acked and record.state == UNACKED_DONE:  # else its queue is gone (Ledger.done)
                w.unacked_done[tag] = record
        current = w.current
        if current is not None and current.tag == tag:
            w.current = None
        if w.status == BUSY:
            w.status = IDLE
        w.log.append(" [x] Done")
        lane = w.lane
        if lane:
            block = lane[-1]
            if block.end is None:
                block.end, block.outcome = ts, "done"
        if not math.isfinite(ts):
            return  # json.loads takes NaN and Infinity, so protocol.decode lets them through
        second = int(ts)
        rates = self.done_per_second
        if rates and rates[-1][0] == second:
            rates[-1] = (second, rates[-1][1] + 1)
        else:
            rates.append((second, 1))

    def _on_returned(self, e: protocol.Returned) -> None:
        w = self._worker(e.worker)
        w.returned += 1
        record = w.release(e.tag, e.msg_id)
        if record is not None:
            self.ledger.returned(record, e.ts, e.reason, e.worker)
        if w.current is not None and w.current.tag == e.tag and e.reason in TAKEN_BACK:
            # The broker took it back while the worker works on it: it goes on (its lane block too).
            w.finishing, w.current = w.current, None
            if record is not None:
                w.taken_back[e.tag] = record
            if w.status == BUSY:
                w.status = IDLE
        if w.current is not None and w.current.tag == e.tag:
            w.current = None
            if w.lane and w.lane[-1].end is None:
                w.lane[-1].end, w.lane[-1].outcome = e.ts, "returned"
            if w.status == BUSY:
                w.status = IDLE

    def _on_failed(self, e: protocol.Failed) -> None:
        w = self._worker(e.worker)
        ts, tag = e.ts, e.tag
        w.failed += 1
        w.last_seen = ts
        self.last_failure = ts
        crash = e.action == "crash"
        # A crash leaves the delivery unacked in the worker's hands until its exit hands it back.
        found = w.held_delivery(tag, e.msg_id) if crash else None
        record = found[1] if found is not None else None if crash else w.release(tag, e.msg_id)
        ledger = self.ledger
        if record is not None:
            ledger.run_failed(record, ts, e.worker, e.action)
            if record.state == UNACKED_DONE:  # no ack mode: unacked until the worker goes
                w.unacked_done[tag] = record
            for other in w.held.values():
                if other is not record:
                    ledger.held_up(other, record)  # waiting behind it, or going back with it in a crash
        current = w.current
        if current is not None and current.tag == tag:
            w.current = None
        if w.status == BUSY:
            w.status = IDLE
        w.log.append(f" [!] Failed: {e.action}")
        lane = w.lane
        if lane and lane[-1].end is None:
            lane[-1].end, lane[-1].outcome = ts, "failed"
        if math.isfinite(ts):
            second = int(ts)
            rates = self.fail_per_second
            if rates and rates[-1][0] == second:
                rates[-1] = (second, rates[-1][1] + 1)
            else:
                rates.append((second, 1))

    def _on_on_fail(self, e: protocol.OnFail) -> None:
        w = self._worker(e.worker)
        w.on_fail = _fail(e.on_fail)
        w.log.append(f" [~] on failure: {w.on_fail.words}")

    def _on_fail_requested(self, e: obs.FailModeRequested) -> None:
        self.on_fail = _fail(e.on_fail)

    def _on_dead_sampled(self, e: obs.DeadLettersSampled) -> None:
        dead = self.dead
        dead.queue, dead.count, dead.sampled, dead.letters = e.queue, e.count, e.ts, e.letters
        for letter in e.letters:
            if letter.msg_id is not None:
                self.ledger.dead_letter_seen(letter.msg_id, letter.reason)

    def _on_dead_moved(self, e: obs.DeadLettersMoved) -> None:
        self.dead.moved += len(e.ids)
        self.dead.error = e.error
        if e.error:
            self.last_error = f"moving the dead letters back: {e.error}"
        self.ledger.move_back(list(e.ids))

    def _on_mode(self, e: protocol.Mode) -> None:
        w = self._worker(e.worker)
        w.prefetch, w.ack = e.prefetch, _ack(e.ack)
        w.log.append(f" [~] mode: {DispatchMode(e.prefetch, w.ack).describe()}")

    def _on_connection(self, e: protocol.Connection) -> None:
        w = self._worker(e.worker)
        if e.state == "lost" and e.reason:
            w.closed_by_broker = e.reason
            w.log.append(f" [!] {e.reason}")
            self.broker_closed = (e.ts, f"{e.worker}'s connection", e.reason)
        if e.state == "restored":
            w.status = BUSY if w.current else IDLE
            w.connection_attempt = 0
            w.log.append(" [*] reconnected")
        else:
            w.status = RECONNECTING
            w.connection_attempt = e.attempt
            if e.state == "lost":
                self._stop_finishing(w, e.ts, "returned")  # the worker cuts it short with the link
                w.log.append(" [!] connection lost")
                # The broker requeued what this connection held, done-but-unacked ones too.
                for record in w.unacked_done.values():
                    self.ledger.worker_gone(record, e.ts, killed=False, worker=e.worker, why=AFTER_LOST_LINK)
                w.unacked_done.clear()

    def _on_cancelled(self, e: protocol.Cancelled) -> None:
        w = self._worker(e.worker)
        w.last_seen = e.ts
        deleted = e.reason == "queue-deleted"
        if w.alive:
            w.status = CANCELLED
        w.log.append(f" [!] {QUEUE_DELETED}" if deleted else " [!] consumer cancelled by the broker")
        # What it holds is no longer in any queue: it still works them, their acks go nowhere.
        for record in [*w.held.values(), *w.unacked_done.values()]:
            self.ledger.orphan(record, e.worker)
        w.unacked_done.clear()
        if self.cancelled_at is None or e.ts - self.cancelled_at > 5:
            self.cancelled, self.cancel_note = {}, ""  # a new step; every worker is cancelled at once in one
        self.cancelled_at = e.ts
        self.cancelled[e.worker] = False
        if deleted or not self.cancel_note:
            self.cancel_note = QUEUE_DELETED if deleted else "consumer cancelled by the broker"
        if deleted:
            self.queue_deleted_at = e.ts
            self.ledger.queue_deleted(e.ts)

    def _on_channel_closed(self, e: protocol.ChannelClosed) -> None:
        w = self._worker(e.worker)
        w.last_seen = e.ts
        reason = protocol.taken_back_reason(e.code, e.reason)
        if w.alive:
            w.status = CHANNEL_CLOSED
        w.closed_by_broker = e.reason
        self.broker_closed = (e.ts, f"{e.worker}'s channel", e.reason)
        w.log.append(f" [!] {'ack timeout: ' if reason == 'ack-timeout' else ''}the broker closed the channel")
        w.log.append(f" [!] {e.reason}")
        self.last_error = f"{e.worker}: the broker closed its channel: {e.reason}"
        # Done but never acked (ack none): requeued with the channel's other deliveries.
        for record in w.unacked_done.values():
            self.ledger.returned(record, e.ts, reason, e.worker)
        w.unacked_done.clear()

    def _on_ack_lost(self, e: protocol.AckLost) -> None:
        w = self._worker(e.worker)
        w.last_seen = e.ts
        w.ack_lost += 1
        record = w.taken_back.pop(e.tag, None)
        if record is None or (e.msg_id is not None and record.msg_id != e.msg_id):
            # Reported done before the channel closed, its ack not yet sent: the ledger knows it by id.
            record = self.ledger.records.get(e.msg_id) if e.msg_id is not None else None
        if record is not None:
            self.ledger.ack_lost_run(record, e.ts, e.worker, e.reason)
        finishing = w.finishing
        if finishing is not None and finishing.tag == e.tag:
            w.finishing = None
            if w.lane and w.lane[-1].end is None:
                w.lane[-1].end, w.lane[-1].outcome = e.ts, "ack lost"
        w.log.append(" [x] Done, but the broker had taken it back: ack lost")

    @staticmethod
    def _stop_finishing(w: WorkerState, ts: float, outcome: str) -> None:
        """The worker stopped working on a task the broker had taken back, without finishing it."""
        if w.finishing is not None and w.current is None and w.lane and w.lane[-1].end is None:
            w.lane[-1].end, w.lane[-1].outcome = ts, outcome
        w.finishing = None
        w.taken_back.clear()

    def _on_error(self, e: protocol.Error) -> None:
        w = self._worker(e.worker)
        w.log.append(f" [!] {e.message}")
        self.last_error = f"{e.worker}: {e.message}"

    def _on_stopped(self, e: protocol.Stopped) -> None:
        w = self._worker(e.worker)
        if w.alive:
            w.status = STOPPING
        w.log.append(f" [*] stopped ({e.reason})")
        if w.remote:
            # No pool sees a remote process end: its last word is this (the broker requeued what it held).
            self._on_exited(obs.WorkerExited(e.worker, e.ts, 1 if e.reason == "error" else 0))

    def _on_exited(self, e: obs.WorkerExited) -> None:
        w = self._worker(e.worker)
        killed = e.code == -9 or (e.code < 0 and w.kill_requested)
        w.status = KILLED if killed else EXITED
        w.exit_code = e.code
        w.exited_at = e.ts
        if e.code != 0 and w.ack is not None and w.ack.lost_with_worker:
            self.last_auto_death = e.ts
        w.log.append(" [!] killed (SIGKILL)" if killed else f" [*] exited with code {e.code}")
        for record in [*w.held.values(), *w.unacked_done.values()]:
            self.ledger.worker_gone(record, e.ts, killed=killed or e.code != 0, worker=e.worker)
        w.held.clear()
        w.unacked_done.clear()
        self._stop_finishing(w, e.ts, "killed" if killed else "exited")
        if w.current is not None:
            if w.lane and w.lane[-1].end is None:
                w.lane[-1].end, w.lane[-1].outcome = e.ts, "killed" if killed else "exited"
            w.current = None

    def _on_stderr(self, e: obs.WorkerStderr) -> None:
        self._worker(e.worker).stderr.append(e.line)

    def _on_garbage(self, e: obs.WorkerGarbage) -> None:
        self.garbage += 1
        self._worker(e.worker).garbage += 1

    def _on_stop_requested(self, e: obs.StopRequested) -> None:
        w = self._worker(e.worker)
        w.stop_requested = True
        w.kill_requested = e.kill
        if w.alive and not e.kill:
            w.status = STOPPING

    def _on_published(self, e: obs.Published) -> None:
        self.ledger.published_task(e.msg_id, e.body, e.ts)
        record = self.ledger.records.get(e.msg_id)
        run = None if record is None or record.seq is None else self.runs.owner(record.seq)
        if record is not None and record.seq is not None and run is not None and not record.run:
            record.run, record.run_seq = run.number, record.seq - run.first_seq + 1
            run.open.add(e.msg_id)
            run.published += 1
            if run.first_published is None:
                run.first_published = e.ts
        if self.first_ts is None:
            self.first_ts = e.ts

    def _on_confirmed(self, e: obs.Confirmed) -> None:
        self.ledger.confirmed_task(e.msg_id)

    def _on_publish_failed(self, e: obs.PublishFailed) -> None:
        self.ledger.publish_failed(e.msg_id, e.message)
        self.last_error = e.message
        record = self.ledger.records.get(e.msg_id)
        self.publish_failure = (record.label() if record is not None else e.msg_id, e.message)

    def _on_republished(self, e: obs.Republished) -> None:
        self.ledger.republished_task(e.msg_id)

    def _on_publisher_blocked(self, e: obs.PublisherBlocked) -> None:
        if self.publish_blocked is None:
            self.publish_blocked_since = e.ts
        self.publish_blocked = e.reason

    def _on_publisher_unblocked(self, e: obs.PublisherUnblocked) -> None:
        self.publish_blocked = None

    def _on_sample(self, e: obs.QueueSample) -> None:
        q = self.queue
        first = q.sampled is None
        q.ready, q.consumers, q.sampled = e.ready, e.consumers, e.ts
        if e.unacked is not None and not q.mgmt_refused:
            q.mgmt_unacked, q.mgmt_sampled = e.unacked, e.ts
        if e.external is not None and not q.mgmt_refused:
            q.external = e.external
            self.others.listed(e.ts, e.external, e.unacked)
        if first:
            # What was already in the queue when we came: part of the balance. What other consumers
            # held then is theirs to account for, when the API says how much that was.
            unacked = 0 if q.mgmt_unacked is None else q.mgmt_unacked - self.others.unacked
            self.baseline = e.ready + max(0, unacked)
        self.others.declared(e.ts, e.consumers, sum(1 for w in self.workers.values() if w.alive))
        if e.ready == 0 and self.last_auto_death is not None and self.ledger.count(READY) and self._still(e.ts):
            self.ledger.vanished(self.last_auto_death)
        self._infer_taken(e)

    def _infer_taken(self, e: obs.QueueSample) -> None:
        """Mark as taken by another consumer the ready tasks the queue no longer has and none of ours reported.

        Only when the shortfall has lasted TAKEN_SETTLE at a quiet moment of ours
        (the events of a delivery to one of ours can reach us after the sample that
        no longer counts it; a task confirmed a moment ago may not be counted yet),
        every live worker of ours answers (a hung one may hold deliveries it never
        reported), others were attached meanwhile, and, when the management API
        counts their deliveries, no more than it counted.
        """
        ledger = self.ledger
        short = ledger.count(READY) - e.ready
        # In a requeue loop the failed task is "ready" between its nack and its next delivery, which the
        # broker makes at once: the queue never shows it, and nobody else took it.
        if short <= 0 or self.broker_state != "connected" or e.ts - self.last_failure < TAKEN_SETTLE:
            self._missing = None
            return
        since, least = self._missing or (e.ts, short)
        self._missing = since, min(least, short)
        if not self.others.seen_since(since - ATTACHED_SLACK):
            return
        if e.ts - since < TAKEN_SETTLE or e.ts - self.last_activity < TAKEN_SETTLE or not self._reported(since):
            return
        cap = self.others.take_cap(e.ts, ledger.taken_ever)
        count = least if cap is None else min(least, cap)
        if count > 0 and ledger.taken_by_others(count, since):
            self._missing = None

    def _reported(self, since: float) -> bool:
        """Every live worker of ours is consuming and has spoken since ``since`` (and a margin).

        A worker reports a delivery before its next ``alive`` (both from its
        connection's loop, about every second), so none then holds a delivery made
        before ``since`` that it did not report. A hung one (SIGSTOP) says nothing.
        """
        after = since + REPORT_MARGIN
        for w in self.workers.values():
            if w.alive and (w.status in (STARTING, RECONNECTING) or w.last_seen < after):
                return False
        return True

    def _on_management_checked(self, e: obs.ManagementChecked) -> None:
        self.queue.mgmt_refused = e.refusal
        if e.refusal:
            # Whatever it said before came from another broker.
            q = self.queue
            q.mgmt_unacked = q.mgmt_sampled = q.external = None

    def _still(self, now: float) -> bool:
        """Nothing moved for a while and every live worker is idle, holds nothing and answers.

        Then a task missing from the broker's empty queue is not on its way to anyone.
        """
        if now - self.last_activity < VANISH_QUIET:
            return False
        for w in self.workers.values():
            if not w.alive or w.status == STARTING:
                continue
            if w.held or w.current is not None or now - w.last_seen > UNRESPONSIVE_AFTER:
                return False
        return True

    def _on_broker(self, e: obs.BrokerStatus) -> None:
        if e.state == "connected" and self.broker_state in ("lost", "reconnecting"):
            self.broker_restarts += 1
            self.ledger.broker_restarted()
        if e.state != self.broker_state:
            self.broker_since = e.ts
        self.broker_state, self.broker_attempt, self.broker_message = e.state, e.attempt, e.message
        # workers.monitor.QueueMonitor's words for a close that came with the broker's reason.
        if e.state == "lost" and e.message.startswith("the broker closed the connection: "):
            self.broker_closed = (e.ts, "the dashboard's connection", e.message.split(": ", 1)[1])

    def _on_purged(self, e: obs.Purged) -> None:
        self.ledger.purge(e.count)

    def _on_mode_requested(self, e: obs.ModeRequested) -> None:
        self.mode = DispatchMode(e.prefetch, _ack(e.ack))

    def _on_broker_restarted(self, e: obs.BrokerRestarted) -> None:
        self.ledger.broker_restarted()
        if not e.kept:
            durable = self.durable if e.durable is None else e.durable
            cause = LostCause.NOT_PERSISTENT if durable else LostCause.TRANSIENT_QUEUE
            lost = self.ledger.lost_in_restart(e.ts, cause)
            self.last_error = f"{lost} waiting task(s) lost in the broker restart ({cause})"

    def _on_run_started(self, e: obs.RunStarted) -> None:
        mode = DispatchMode(e.prefetch, _ack(e.ack))
        self.runs.start(e.ts, e.name, e.first_seq, e.tasks, mode, (w.name for w in self.workers.values() if w.alive))

    def _runs_tick(self, ts: float) -> None:
        """Count the time up to ``ts`` as idle for each live worker with nothing to do while tasks waited."""
        active = self.runs.active
        clock = active[0].clock if len(active) == 1 else min(r.clock for r in active)
        if not ts > clock:  # nothing to count (NaN counts nothing either)
            return
        waiting = self.ledger.state_counts[READY] > 0
        idle = []
        for w in self.workers.values():
            if w.current is None:
                if w.status is IDLE:
                    idle.append(w.name)
                if w.held and w.status.alive:  # delivered, not started yet
                    waiting = True
            elif len(w.held) > 1 and w.status.alive:  # a task waits behind the current one
                waiting = True
        for run in active:
            run.tick(ts, idle if waiting else ())

    def _runs_heard(self, item: obs.Observation) -> None:
        """What a fold's item did to the runs still going: a task finished, settled, or a mode asked for."""
        ts = item.ts
        kind = type(item)
        if kind is obs.ModeRequested:
            for going in self.runs.active:
                going.mode_changes.append(self.mode)
            return
        msg_id = getattr(item, "msg_id", None)
        record = self.ledger.records.get(msg_id) if isinstance(msg_id, str) else None
        run = self.runs.by_number(record.run) if record is not None and record.run else None
        if run is not None and kind is protocol.Received and getattr(item, "redelivered", False):
            run.redelivered += 1
        if run is not None and kind is protocol.Done and record is not None:
            worker = getattr(item, "worker", "")
            for delivery in reversed(record.deliveries):
                if delivery.worker == worker and delivery.ended == ts and delivery.outcome in ("done", UNACKED_DONE):
                    run.finished_task(worker, record.short_label(), delivery.started or delivery.ts, ts)
                    break
        # One task's news settles at most that task. The others (exits, purges, samples, restarts) any
        # number, but only by a loss: the open tasks are looked at again only when a loss was counted.
        if msg_id is None:
            ledger = self.ledger
            losses = ledger.lost + ledger.purged + ledger.taken + ledger.deleted + ledger.failed
            if losses == self._runs_losses:
                return
            self._runs_losses = losses
        for each in list(self.runs.active) if msg_id is None else ([run] if run is not None else []):
            self._settle(each, ts, msg_id)

    def _settle(self, run: Run, ts: float, msg_id: str | None) -> None:
        records = self.ledger.records
        for each in list(run.open) if msg_id is None else [msg_id]:
            record = records.get(each)
            if record is None or record.state in TERMINAL:
                run.open.discard(each)
                run.lost += record is not None and record.state == LOST
        if not run.open and run.published >= run.tasks:
            self.runs.end(run, ts)

    def _on_session_started(self, e: obs.SessionStarted) -> None:
        self.queue_name = e.queue
        self.ledger.prefix = e.prefix
        self.mode = DispatchMode(e.prefetch, _ack(e.ack))
        self.broker = e.broker
        self.durable = e.durable
        self.on_fail = _fail(e.on_fail)
        try:
            self.spec = QueueSpec(e.durable, QueueType(e.queue_type), e.delivery_limit, e.dead_letter)
        except (ValueError, SettingsError):  # a hand-edited log: the tutorial's queue
            self.spec = QueueSpec(e.durable)
        self.broker_version = e.broker_version
        self.ack_timeout, self.ack_timeout_source = e.ack_timeout, e.ack_timeout_source
        self._configure()

    # ----- figures for the widgets

    @property
    def from_elsewhere(self) -> int:
        """Messages this dashboard did not publish: queued before it came, or published by someone else.

        The two overlap (a message queued before we came is first seen at its
        delivery), and a message published elsewhere is known only once delivered:
        the larger of the two counts is the most that is known.
        """
        return max(self.baseline, self.ledger.foreign)

    def live_workers(self) -> list[WorkerState]:
        return [w for w in self.workers.values() if w.alive]

    def derived_unacked(self) -> int:
        """Unacked as the workers' own events account for it."""
        return sum(w.unacked for w in self.workers.values())

    def held_auto_acked(self) -> int:
        """Tasks live workers hold that the broker no longer counts: delivered under auto ack, forgotten then.

        The cards' *holds* counts them; the queue's unacked does not.
        """
        return sum(
            1
            for w in self.workers.values()
            if w.alive
            for r in w.held.values()
            if r.deliveries and not r.deliveries[-1].ack.unacked_while_held
        )

    def settled(self) -> int:
        """Messages whose story is over, as the events tell: done, lost, purged, taken by others, deleted.

        While tasks move, the balance shows this against what came in: both sides
        come from our own records, so it never reads more out than in, where the
        broker's figures (unacked ~5 s behind) would count a finished task twice.
        """
        ledger = self.ledger
        return ledger.done_messages + ledger.lost + ledger.purged + ledger.taken + ledger.deleted

    def unacked(self, now: float) -> tuple[int, str]:
        """The unacked figure and its source: the management API when fresh, else derived."""
        q = self.queue
        if q.mgmt_unacked is not None and q.mgmt_sampled is not None and now - q.mgmt_sampled < 15:
            return q.mgmt_unacked, FROM_MANAGEMENT
        return self.derived_unacked(), DERIVED_IGNORED if q.mgmt_refused else DERIVED

    def counted_by_api(self, now: float) -> bool:
        """The management API answers for this broker and its figures are fresh."""
        return self.unacked(now)[1] == FROM_MANAGEMENT

    def stale(self, now: float) -> bool:
        """True when the broker's figures are too old to trust."""
        sampled = self.queue.sampled
        return self.broker_state != "connected" or sampled is None or now - sampled > STALE_AFTER

    def our_consumers(self) -> int:
        return sum(1 for w in self.workers.values() if w.status.consuming)

    def rate(self, now: float, seconds: int = 5) -> float:
        """Tasks done per second over the last few whole seconds."""
        cutoff = int(now) - seconds
        total = sum(count for second, count in self.done_per_second if cutoff <= second < int(now))
        return total / seconds

    def fail_rate(self, now: float, seconds: int = 5) -> float:
        """Failures per second over the last few whole seconds: a requeue loop's speed."""
        cutoff = int(now) - seconds
        return sum(count for second, count in self.fail_per_second if cutoff <= second < int(now)) / seconds

    def rate_series(self, now: float, seconds: int = 30) -> list[float]:
        """Done per second for each of the last ``seconds`` seconds, oldest first."""
        counts = dict(self.done_per_second)
        end = int(now)
        return [float(counts.get(s, 0)) for s in range(end - seconds, end)]

    def balance(self, now: float) -> tuple[int, int, bool | None]:
        """(published + from elsewhere) vs (done + ready + unacked + lost + purged + taken by others + deleted).

        The sides come from independent sources: published is the publisher's
        confirmed record, done and lost the workers' events, ready the broker's
        passive declare, unacked the management API or the workers. From elsewhere
        is what was queued before we came or, once more than that reached our
        workers, every message they were the first to show us (``new_task`` run
        in another terminal, the tutorial's way). The check only means something
        when the queue is quiet (nothing in progress, fresh figures): then the
        third item is True or False, else None. Taken by others counts our tasks
        inferred taken by consumers we do not run; the unacked side then leaves out
        what those consumers hold, when the management API says how much that is.
        """
        ledger = self.ledger
        published = ledger.confirmed + self.from_elsewhere
        ready = self.queue.ready or 0
        unacked, source = self.unacked(now)
        others = self.others
        if source == FROM_MANAGEMENT:
            # What other consumers hold is theirs: ours among it are counted as taken by them.
            unacked = max(0, unacked - others.unacked)
        rhs = ledger.done_messages + ready + unacked + ledger.lost + ledger.purged + ledger.taken
        rhs += ledger.deleted  # went with a deleted queue
        rhs += ledger.dead_lettered + ledger.dropped  # in <queue>.dead, or discarded by the broker
        settling = source == FROM_MANAGEMENT and (now - self.last_activity < MGMT_LAG or others.settling(now, MGMT_LAG))
        quiet = (
            not self.stale(now)
            and not settling
            and not self.uncounted_others(now)
            and ledger.count(HELD) == 0
            and all(w.current is None for w in self.workers.values())
            and ledger.count(READY) == ready
        )
        return published, rhs, (published == rhs) if quiet else None

    def missing_from_queue(self, now: float) -> int:
        """Ready tasks of ours the broker's queue has not held for a while, not yet inferred taken (being checked)."""
        missing = self._missing
        return missing[1] if missing is not None and now - missing[0] >= TAKEN_SETTLE else 0

    def uncounted_others(self, now: float) -> int:
        """Consumers we do not run, attached now, whose takings nothing counts: the balance cannot close.

        With the management API their channels' figures account for what they take.
        Without it, the passive declare still counts them (more consumers than our
        live workers), but nothing says which of our tasks they hold: the balance
        waits until they leave, and the tasks they took are then inferred.
        """
        return 0 if self.counted_by_api(now) else self.others.surplus


def _ack(value: str) -> AckMode:
    try:
        return check_ack(value)
    except SettingsError:
        return AckMode.MANUAL


def _fail(value: str) -> FailMode:
    try:
        return check_fail(value)
    except SettingsError:
        return FailMode.REQUEUE


_MOVES = frozenset({protocol.Received, protocol.Done, protocol.Returned, obs.WorkerExited, obs.Confirmed, obs.Purged})
_MOVES |= {protocol.AckLost, protocol.Cancelled, protocol.ChannelClosed, protocol.Failed}

_HANDLERS: dict[type, Callable[[Model, Any], None]] = {
    protocol.Ready: Model._on_ready,
    protocol.Received: Model._on_received,
    protocol.Started: Model._on_started,
    protocol.Done: Model._on_done,
    protocol.Returned: Model._on_returned,
    protocol.Mode: Model._on_mode,
    protocol.Connection: Model._on_connection,
    protocol.Alive: Model._on_alive,
    protocol.Error: Model._on_error,
    protocol.Stopped: Model._on_stopped,
    protocol.Cancelled: Model._on_cancelled,
    protocol.ChannelClosed: Model._on_channel_closed,
    protocol.AckLost: Model._on_ack_lost,
    protocol.Dropped: Model._on_dropped,
    obs.RemoteWorkerHeard: Model._on_remote_heard,
    protocol.Failed: Model._on_failed,
    protocol.OnFail: Model._on_on_fail,
    obs.FailModeRequested: Model._on_fail_requested,
    obs.DeadLettersSampled: Model._on_dead_sampled,
    obs.DeadLettersMoved: Model._on_dead_moved,
    obs.WorkerSpawned: Model._on_spawned,
    obs.WorkerExited: Model._on_exited,
    obs.WorkerStderr: Model._on_stderr,
    obs.WorkerGarbage: Model._on_garbage,
    obs.StopRequested: Model._on_stop_requested,
    obs.Published: Model._on_published,
    obs.Confirmed: Model._on_confirmed,
    obs.PublishFailed: Model._on_publish_failed,
    obs.Republished: Model._on_republished,
    obs.PublisherBlocked: Model._on_publisher_blocked,
    obs.PublisherUnblocked: Model._on_publisher_unblocked,
    obs.QueueSample: Model._on_sample,
    obs.ManagementChecked: Model._on_management_checked,
    obs.BrokerStatus: Model._on_broker,
    obs.Purged: Model._on_purged,
    obs.ModeRequested: Model._on_mode_requested,
    obs.SessionStarted: Model._on_session_started,
    obs.BrokerRestarted: Model._on_broker_restarted,
    obs.RunStarted: Model._on_run_started,
}
_RUN_NEWS = _MOVES | {obs.QueueSample, obs.BrokerRestarted, obs.ModeRequested, obs.PublishFailed}

__all__ = ["DONE", "HELD", "LOST", "PURGED", "READY", "UNACKED_DONE", "Model", "WorkerState"]
