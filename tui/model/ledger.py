"""Provides the message ledger: where every task went, from publish to done or loss.

Pure and Textual-free. Totals are counters, so evicting finished records (to
keep memory bounded on long runs) never changes a figure; evictions are counted.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from enum import Enum

from workers.settings import AckMode

# Why a message was delivered (again).
FIRST = "first delivery"
AFTER_CRASH = "after a crash"
MODE_CHANGE = "returned by a mode change"
AFTER_STOP = "returned at a stop"
AFTER_LOST_LINK = "after a lost connection"
AFTER_RESTART = "after a broker restart"
REDELIVERED = "redelivered"
COPY = "a second copy: republished"
"""Why a message already delivered came again unflagged: the publisher sent it twice (a retry)."""
AFTER_ACK_TIMEOUT = "after an ack timeout"
AFTER_CHANNEL_CLOSE = "after the broker closed the channel"

SUPERSEDED = "gone"
"""A delivery's outcome while we know only that the broker handed the message to someone else."""

AFTER_FAILURE = "after a failure: requeued"
"""Why a failed task came again: its worker nacked it with requeue (the broker puts it back at the head)."""
MOVED_BACK = "moved back from the dead-letter queue"

FROM_OTHERS = "back from another consumer"
"""Why a message inferred taken by another consumer reached one of ours after all (that consumer gave it back)."""

RETURN_REASONS = {
    "mode-change": MODE_CHANGE,
    "stop": AFTER_STOP,
    "connection-lost": AFTER_LOST_LINK,
    "ack-timeout": AFTER_ACK_TIMEOUT,
    "channel-closed": AFTER_CHANNEL_CLOSE,
}
TAKEN_BACK = {"ack-timeout": "taken back (ack timeout)", "channel-closed": "taken back (channel closed)"}
"""How a delivery ended when the broker took it back itself: it closed the channel (protocol.taken_back_reason)."""
_TAKEN_BACK_OUTCOMES = frozenset(TAKEN_BACK.values())
ACK_LOST = "worked, ack lost"
"""A delivery's outcome when its worker finished it after the broker had taken it back: the broker never saw it done."""

# Where a message is now.
PUBLISHING = "publishing"
READY = "ready"
HELD = "held"
UNACKED_DONE = "done, never acked"
DONE = "done"
LOST = "lost"
PURGED = "purged"
FAILED = "publish failed"
TAKEN = "taken by another consumer (inferred)"
"""Gone from the queue to a consumer this dashboard does not run: our workers never reported it."""
DELETED = "deleted with the queue"
DEAD_LETTERED = "dead-lettered"
"""In the queue's dead-letter queue: rejected, or returned past the delivery limit (the broker did it)."""
DROPPED = "dropped by the broker"
"""Rejected, or past the delivery limit, with no dead-letter target: the broker discarded it."""
TERMINAL = frozenset({DONE, LOST, PURGED, FAILED, TAKEN, DELETED, DEAD_LETTERED, DROPPED})

# How a failed delivery ended (protocol.Failed's action), as a lifeline tells it.
FAIL_REQUEUED = "failed -> requeued"
FAIL_NACKED = "failed -> nacked"
"""Nacked with requeue, but the broker dead-lettered or dropped it: it was past the delivery limit."""
FAIL_REJECTED = "failed -> rejected"
FAIL_CRASHED = "failed -> crashed"
FAIL_LOST = "failed -> lost (auto ack)"
FAIL_UNACKED = "failed, never acked"
_FAIL_OUTCOMES = frozenset({FAIL_REQUEUED, FAIL_NACKED, FAIL_REJECTED, FAIL_CRASHED, FAIL_LOST, FAIL_UNACKED})
_FAIL_ACTIONS = {"requeue": FAIL_REQUEUED, "crash": FAIL_CRASHED, "reject": FAIL_REJECTED}
DEATH_REASONS = {"rejected": "rejected", "delivery_limit": "over the delivery limit"}
"""x-first-death-reason in words (the broker's own word is kept for any other)."""
DELIVERIES_KEPT = 40
"""Deliveries a record keeps (its first few and its latest): a requeue loop makes thousands."""
_KEPT_FIRST = 4

DEFAULT_CAP = 50_000


class LostCause(str, Enum):
    """Why a message is gone for good: each lost record has one, and each reads differently on the screen."""

    WORKER_DIED = "auto ack, worker died"
    """Delivered under auto ack (the broker forgot it then) to a worker that died before finishing it."""
    UNSEEN = "auto ack, died in transit"
    """Written under auto ack to a worker's socket, and the worker died before it read it: nobody reported it."""
    TRANSIENT_QUEUE = "transient queue, broker restart"
    """Waiting in a non-durable queue when the broker restarted: the queue went, and everything in it."""
    NOT_PERSISTENT = "not persistent, broker restart"
    """A non-persistent message in a durable queue when the broker restarted: the queue came back, it did not."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def short(self) -> str:
        """The cause in a word or two, where several causes share a line."""
        return _LOST_SHORT[self]

    @property
    def sentence(self) -> str:
        """The cause in one sentence (F9's caption for a lost task)."""
        return _LOST_SENTENCES[self]


_LOST_SHORT = {
    LostCause.WORKER_DIED: "auto ack",
    LostCause.UNSEEN: "in transit",
    LostCause.TRANSIENT_QUEUE: "transient queue",
    LostCause.NOT_PERSISTENT: "not persistent",
}
_LOST_SENTENCES = {
    LostCause.WORKER_DIED: (
        "lost: delivered under auto ack (the broker forgot it then) to a worker that died before finishing it"
    ),
    LostCause.UNSEEN: "lost: sent under auto ack to a worker that died before it could report it",
    LostCause.TRANSIENT_QUEUE: "lost: it waited in a transient (non-durable) queue, which the broker restart removed",
    LostCause.NOT_PERSISTENT: (
        "lost: a non-persistent message; the durable queue came back after the restart, the message did not"
    ),
}
PURGE_CAUSE = "removed by purge"
DELETE_CAUSE = "went with the deleted queue"


@dataclass(slots=True)
class Delivery:
    """One delivery of a message to a worker and how it ended."""

    worker: str
    ts: float
    redelivered: bool
    why: str
    ack: AckMode
    ended: float | None = None
    outcome: str | None = None
    started: float | None = None
    """When work on it began; until then it waits in the worker's prefetch window."""
    copy: bool = False
    """A second copy of a republished message (the broker got it twice), not a redelivery."""
    orphaned: bool = False
    """Its queue was deleted while the worker held it: the broker forgot the message (acks of it go nowhere)."""
    count: int | None = None
    """The broker's ``x-delivery-count`` for it (quorum queues): how many deliveries came before."""
    late: bool = False
    """Reported after a later delivery of the same message (another worker's pipe was read first): told
    in its place by the counts, it changes nothing about where the message is now."""

    @property
    def in_queue_unacked(self) -> bool:
        """Counted in its queue's unacked while held: a manual delivery whose queue still exists."""
        return self.ack.unacked_while_held and not self.orphaned


@dataclass(slots=True)
class MessageRecord:
    """The story of one message."""

    msg_id: str
    body: str
    seq: int | None
    published: float | None
    confirmed: bool = False
    state: str = READY
    deliveries: list[Delivery] = field(default_factory=list)
    done_count: int = 0
    finished: bool = False
    next_why: str = FIRST
    republished: int = 0
    """Times the publisher sent it again under its id after a connection went before the confirm."""
    failure: str = ""
    """Why the publish failed, in the publisher's words (the broker's reason)."""
    run: int = 0
    """The run (a preset or scenario published as one) it belongs to, numbered from 1; 0 for none."""
    run_seq: int = 0
    """Its number within that run, from 1."""
    lost_cause: LostCause | None = None
    """Why it is lost, once it is."""

    def cause(self) -> str:
        """Why it ended where it is, for a task that did not end done: lost (and why), purged, deleted; else ""."""
        if self.state == LOST and self.lost_cause is not None:
            return self.lost_cause.value
        return {PURGED: PURGE_CAUSE, DELETED: DELETE_CAUSE, FAILED: self.failure}.get(self.state, "")

    failures: int = 0
    """Times a worker failed it (its body holds '!'): the loop count of a poison task."""
    death: str = ""
    """Why the broker dead-lettered or dropped it (``rejected``, ``delivery_limit``), from x-first-death-reason
    when the dead-letter queue was read, else as the model inferred it."""
    elided: int = 0
    """Deliveries no longer kept in ``deliveries`` (DELIVERIES_KEPT): counted, not silent."""

    @property
    def bad(self) -> bool:
        """A task that fails when worked (its body holds '!')."""
        return "!" in self.body

    def label(self) -> str:
        """``r2#3`` for the third task of run 2, ``#17`` for our other tasks, the id for anyone else's."""
        if self.run:
            return f"r{self.run}#{self.run_seq}"
        return f"#{self.seq}" if self.seq is not None else self.msg_id

    def short_label(self) -> str:
        """``#3`` for a run's task (where the run is shown beside it, as on the timeline), else ``label()``."""
        return f"#{self.run_seq}" if self.run else self.label()

    def lifeline(self) -> str:
        """The story in one line: ``#17 -> w2 -> killed -> requeued -> w3 (redelivered) -> done``."""
        parts = [self.label()]
        if self.republished:
            parts.append("republished" if self.republished == 1 else f"republished x{self.republished}")
        last = len(self.deliveries) - 1
        shown: list[int] = list(range(len(self.deliveries)))
        if len(self.deliveries) + self.elided > 8:
            # A requeue loop: its start and its end, and how many went between.
            between = len(self.deliveries) - 6 + self.elided
            shown = [*range(3), -1, *range(len(self.deliveries) - 3, len(self.deliveries))]
        for index in shown:
            if index < 0:
                parts.append(f"… {between} more deliveries ({self.failures} failures in all) …")
                continue
            delivery = self.deliveries[index]
            mark = " (redelivered)" if delivery.redelivered else " (copy)" if delivery.copy else ""
            parts.append(f"{delivery.worker}{mark}")
            outcome = delivery.outcome
            if outcome is None and self.state == HELD:
                parts.append("working" if delivery.started is not None else "waiting")
            elif outcome is None:
                parts.append(self.state)
            elif outcome == "done":
                parts.append(outcome)
            elif outcome == "done, never acked":
                # Once its worker is gone the broker has it again.
                back = index < last or self.state != UNACKED_DONE
                parts.append(f"{outcome} -> requeued" if back else outcome)
            elif outcome in ("killed, lost", "exited, lost"):
                parts.append(outcome.replace(", ", " -> "))
            elif outcome in _FAIL_OUTCOMES:
                back = index < last or self.state == READY
                parts.append(f"{outcome} -> requeued" if back and outcome in (FAIL_CRASHED, FAIL_UNACKED) else outcome)
            else:
                parts.append(f"{outcome} -> requeued")
        if not self.deliveries:
            parts.append(self.state)
        elif self.state == TAKEN and parts[-1].endswith("requeued"):
            parts.append(self.state)  # given back by ours, then taken by someone else's consumer
        elif self.state in (PURGED, LOST, DELETED) and parts[-1].endswith("requeued"):
            parts.append(self.state)  # back in the queue, then purged (or gone with a transient queue)
        elif self.state in (DEAD_LETTERED, DROPPED):
            reason = DEATH_REASONS.get(self.death, self.death)
            parts.append(f"{self.state} ({reason})" if reason else self.state)
        return " -> ".join(parts)


class Ledger:
    """Every message's record and the totals that follow from them."""

    def __init__(self, cap: int = DEFAULT_CAP, prefix: str | None = None) -> None:
        self.cap = cap
        self.prefix = prefix
        self.records: dict[str, MessageRecord] = {}
        self._terminal_order: collections.deque[str] = collections.deque()
        self.state_counts: collections.Counter[str] = collections.Counter()
        self.published = 0
        self.confirmed = 0
        self.failed = 0
        self.republished = 0
        """Tasks sent again under their id after a lost connection (each may reach the broker twice)."""
        self.copies = 0
        """Deliveries of a second copy of a republished task."""
        self.deliveries = 0
        self.redeliveries = 0
        self.done_messages = 0
        self.done_runs = 0
        self.duplicates = 0
        self.lost = 0
        self.lost_unseen = 0
        """Of ``lost``: vanished in transit to a dead auto-ack worker, never reported by anyone."""
        self.lost_by: collections.Counter[LostCause] = collections.Counter()
        """``lost`` by cause (a counter: evicting records changes nothing)."""
        self.purged = 0
        self.evicted = 0
        self.foreign = 0
        """Messages first seen at their delivery: published by someone else, or queued before we came."""
        self.taken = 0
        """Messages inferred taken by consumers we do not run (TAKEN now; a counter, so eviction changes nothing)."""
        self.taken_ever = 0
        """Every such inference, including those whose message later came to one of ours."""
        self.ack_lost = 0
        """Runs finished after the broker had taken their delivery back (its channel closed): worked, never acked."""
        self.deleted = 0
        """Messages that went with their queue when it was deleted (ready in it, or held by a worker and returned)."""
        self.failures = 0
        """Runs that failed (worker events: ``failed``)."""
        self.requeued = 0
        """Failures the worker nacked with requeue (the loop's turns)."""
        self.rejected = 0
        """Failures the worker rejected without requeue."""
        self.crashed = 0
        """Failures that made the worker exit."""
        self.dead_lettered = 0
        """Ours in the dead-letter queue now: rejected or past the delivery limit (inferred, then read there)."""
        self.dropped = 0
        """Ours the broker discarded: rejected or past the limit with no dead-letter target (inferred)."""
        self.moved_back = 0
        """Dead letters moved back to the work queue."""
        self.delivery_limit: int | None = None
        """The limit the broker enforces (quorum: x-delivery-limit, or 4.0+'s default 20), None for none."""
        self.counts_deliveries = False
        """The queue counts deliveries (quorum): a delivery without x-delivery-count is its first (count 0)."""
        self.dead_target = False
        """The work queue dead-letters into <queue>.dead (else what it dead-letters is dropped)."""
        self.max_failures = 0
        """The most failures of one message: the longest requeue loop."""
        self.max_count = 0
        """The largest x-delivery-count a worker reported (quorum queues)."""
        self.delayed: dict[str, str] = {}
        """Good tasks held up by a failing one (waiting behind it in a worker's window, or given back
        with it by a crash), by id, and the failing task's label. Bounded like the other id lists."""
        self.lost_ids: collections.deque[str] = collections.deque(maxlen=1000)
        self.duplicate_ids: collections.deque[str] = collections.deque(maxlen=1000)
        self._anonymous = 0

    # ----- lookups

    def _seq(self, msg_id: str) -> int | None:
        """``n`` for an id ``<prefix>-<n>``, None for anyone else's."""
        if self.prefix:
            # Digits hold no "-", so the last one ends the prefix: one call splits the id, where
            # startswith(prefix + "-") and a slice cost every new record 60 % more.
            head, _, tail = msg_id.rpartition("-")
            if head == self.prefix and tail.isdecimal():
                return int(tail)
        return None

    def _move(self, record: MessageRecord, state: str) -> None:
        was = record.state
        if was == state:
            return
        counts = self.state_counts
        counts[was] -= 1
        counts[state] += 1
        record.state = state
        if state in TERMINAL:
            self._terminal_order.append(record.msg_id)
            if len(self.records) > self.cap:
                self._evict()

    def _evict(self) -> None:
        """Drop the oldest finished records until under the cap (counted, not silent)."""
        while len(self.records) > self.cap and self._terminal_order:
            msg_id = self._terminal_order.popleft()
            record = self.records.get(msg_id)
            if record is not None and record.state in TERMINAL:
                del self.records[msg_id]
                self.state_counts[record.state] -= 1
                self.evicted += 1

    # ----- publisher side

    def published_task(self, msg_id: str, body: str, ts: float) -> None:
        if msg_id in self.records:
            return
        self.records[msg_id] = MessageRecord(msg_id, body, self._seq(msg_id), ts, state=PUBLISHING)
        self.state_counts[PUBLISHING] += 1
        self.published += 1

    def confirmed_task(self, msg_id: str) -> None:
        record = self.records.get(msg_id)
        if record is None or record.confirmed:
            return
        record.confirmed = True
        self.confirmed += 1
        if record.state == PUBLISHING:
            self._move(record, READY)

    def publish_failed(self, msg_id: str, reason: str = "") -> None:
        record = self.records.get(msg_id)
        if record is not None and record.state == PUBLISHING:
            self.failed += 1
            record.failure = reason
            self._move(record, FAILED)

    def republished_task(self, msg_id: str) -> None:
        """The publisher sends the task again, same id: the broker may get (and deliver) it twice."""
        record = self.records.get(msg_id)
        if record is not None:
            record.republished += 1
            self.republished += 1

    # ----- worker side

    def received(
        self,
        msg_id: str | None,
        body: str,
        worker: str,
        ts: float,
        redelivered: bool,
        ack: AckMode,
        count: int | None = None,
    ) -> MessageRecord:
        if msg_id is None:
            self._anonymous += 1
            msg_id = f"?{self._anonymous}"
        record = self.records.get(msg_id)
        if record is None:  # seen for the first time at its delivery: someone else's message
            record = self.records[msg_id] = MessageRecord(msg_id, body, self._seq(msg_id), None, state=READY)
            self.state_counts[READY] += 1
            self.foreign += 1
        state = record.state
        if state == PUBLISHING:
            # The delivery beat the confirm to us: the broker has it, so it was confirmed.
            record.confirmed = True
            self.confirmed += 1
        elif state == PURGED:
            self.purged -= 1  # it was not in the purge after all
        elif state == TAKEN:
            self.taken -= 1  # the other consumer gave it back (it closed its channel, or nacked it)
        deliveries = record.deliveries
        if count is None and self.counts_deliveries:
            count = 0  # measured on 3.10.8: a quorum queue's first delivery to a consumer has no header
        if count is not None and deliveries and (deliveries[-1].count or 0) > count:
            return self._late(record, worker, ts, redelivered, ack, count)
        if count is None and deliveries and deliveries[-1].worker != worker and ts < deliveries[-1].ts:
            # Classic queues count no deliveries: the clocks tell. Each worker has its own pipe, so another
            # worker's later delivery (a reject that dead-lettered it, say) can be read first; this earlier
            # one was counted as a move back from the dead-letter queue. Same machine, same clock; a remote
            # worker's clock may be off (docs/architecture.md).
            return self._late(record, worker, ts, redelivered, ack, None)
        if state == DEAD_LETTERED:
            # Delivered from the work queue again: it was moved back (its DeadLettersMoved may come after this).
            self.dead_lettered -= 1
            self.moved_back += 1
            record.next_why = MOVED_BACK
        elif state == DROPPED:
            self.dropped -= 1
        # Unflagged, yet delivered before: the broker got the message twice (a republish), not back.
        copy = not redelivered and bool(deliveries) and record.republished > 0
        if state == HELD and deliveries and deliveries[-1].outcome is None and not copy:
            # Handed out again before the previous holder's exit or return reached us: each
            # worker has its own pipe, and the broker requeues faster than the pool reaps a
            # killed process. Close that delivery now; the late event names what happened.
            deliveries[-1].ended, deliveries[-1].outcome = ts, SUPERSEDED
        why = record.next_why if (redelivered or deliveries) else FIRST
        if redelivered and why == FIRST:
            why = REDELIVERED
        if copy:
            why = COPY
            self.copies += 1
        deliveries.append(Delivery(worker, ts, redelivered, why, ack, copy=copy, count=count))
        if count is not None and count > self.max_count:
            self.max_count = count
        if len(deliveries) > DELIVERIES_KEPT:
            del deliveries[_KEPT_FIRST]
            record.elided += 1
        record.next_why = REDELIVERED
        self.deliveries += 1
        if redelivered:
            self.redeliveries += 1
        self._move(record, HELD)
        return record

    def _late(
        self, record: MessageRecord, worker: str, ts: float, redelivered: bool, ack: AckMode, count: int | None
    ) -> MessageRecord:
        """An earlier delivery (by the broker's count, else by time) reported after a later one: put in its place,
        nothing moves."""
        deliveries = record.deliveries
        if count is not None:
            index = next(i for i, d in enumerate(deliveries) if (d.count or 0) > count)
        else:
            index = next(i for i, d in enumerate(deliveries) if d.ts > ts)
        why = REDELIVERED if redelivered else FIRST
        deliveries.insert(index, Delivery(worker, ts, redelivered, why, ack, count=count, late=True))
        self.deliveries += 1
        if redelivered:
            self.redeliveries += 1
        return record

    def done(self, record: MessageRecord, ts: float, acked: bool, worker: str | None = None) -> None:
        deliveries = record.deliveries
        delivery = _open_delivery(deliveries, worker)
        if delivery is not None:
            delivery.ended = ts
            delivery.outcome = "done" if acked else "done, never acked"
        last = delivery if delivery is not None else (deliveries[-1] if deliveries else None)
        if not acked and last is not None and last.orphaned:
            # Never acked, and its queue is gone: nothing will hand it out again.
            last.ended, last.outcome = ts, "done, never acked"
            self.done_runs += 1
            self.deleted += 1
            self._move(record, DELETED)
            return
        record.done_count += 1
        self.done_runs += 1
        if acked and not record.finished:
            record.finished = True
            self.done_messages += 1
        if record.done_count == 2:
            self.duplicates += 1
            self.duplicate_ids.append(record.msg_id)
        if record.republished and any(d.outcome is None for d in deliveries):
            return  # another copy is still out with a worker: the message is held yet
        self._move(record, DONE if acked else UNACKED_DONE)

    def returned(self, record: MessageRecord, ts: float, reason: str, worker: str | None = None) -> None:
        """The worker gave the message back unworked (nack + requeue)."""
        why, outcome = RETURN_REASONS.get(reason, REDELIVERED), TAKEN_BACK.get(reason) or f"returned ({reason})"
        if worker is not None and self._superseded(record, worker, outcome, why):
            return
        self._requeue(record, ts, why, outcome)

    def worker_gone(
        self, record: MessageRecord, ts: float, killed: bool, worker: str | None = None, why: str | None = None
    ) -> None:
        """The worker holding this message went away (or lost its link); auto-acked work in it is lost.

        ``worker`` names who went, so a message the broker already handed to
        someone else only has that worker's delivery explained; ``why`` overrides
        the reason a redelivery will be given (a lost link is neither crash nor stop).
        """
        outcome = "killed" if killed else "worker exited"
        why = why or (AFTER_CRASH if killed else AFTER_STOP)
        if worker is not None and self._superseded(record, worker, outcome, why):
            return
        delivery = record.deliveries[-1] if record.deliveries else None
        if record.state == HELD and delivery is not None and delivery.ack.lost_with_worker:
            delivery.ended, delivery.outcome = ts, "killed, lost" if killed else "exited, lost"
            self._lose(record, LostCause.WORKER_DIED)
            return
        if record.state in (HELD, UNACKED_DONE):
            # Held, or finished but never acked: the broker hands it out again.
            self._requeue(record, ts, why, outcome)

    def _requeue(self, record: MessageRecord, ts: float, why: str, outcome: str) -> None:
        if record.deliveries and record.deliveries[-1].outcome is None:
            record.deliveries[-1].ended = ts
            record.deliveries[-1].outcome = outcome
        record.next_why = why
        limit = self.delivery_limit
        if limit is not None and record.state in (HELD, UNACKED_DONE) and record.deliveries:
            last = record.deliveries[-1]
            if last.count is not None and last.count >= limit:
                # Returned once more than the limit allows: the broker dead-letters (or drops) it instead.
                if last.outcome == FAIL_REQUEUED:
                    last.outcome = FAIL_NACKED
                self._dead(record, "delivery_limit")
                return
        if record.state in (HELD, UNACKED_DONE) and record.deliveries and record.deliveries[-1].orphaned:
            self.deleted += 1  # back to a queue that was deleted: gone with it
            self._move(record, DELETED)
        if record.state in (HELD, UNACKED_DONE):
            self._move(record, READY)

    def run_failed(self, record: MessageRecord, ts: float, worker: str, action: str) -> None:
        """``worker`` failed the message; ``action`` (protocol.Failed) says what it told the broker."""
        self.failures += 1
        record.failures += 1
        if record.failures > self.max_failures:
            self.max_failures = record.failures
        outcome = _FAIL_ACTIONS.get(action)
        delivery = _open_delivery(record.deliveries, worker)
        if delivery is not None and delivery.late:
            delivery.ended, delivery.outcome = ts, outcome or FAIL_UNACKED
            self.requeued += action == "requeue"
            self.crashed += action == "crash"
            return
        if outcome is not None and self._superseded(record, worker, outcome, AFTER_FAILURE):
            # Its next delivery (to another worker, whose pipe was read first) is known already:
            # this news only explains the earlier one. Where the message is now stays as it is.
            if action == "requeue":
                self.requeued += 1
            elif action == "crash":
                self.crashed += 1
            return
        delivery = _open_delivery(record.deliveries, worker)
        if action == "requeue":
            self.requeued += 1
            if delivery is not None:
                delivery.ended, delivery.outcome = ts, FAIL_REQUEUED
            self._requeue(record, ts, AFTER_FAILURE, FAIL_REQUEUED)
            return
        if action == "reject":
            self.rejected += 1
            if delivery is not None:
                delivery.ended, delivery.outcome = ts, FAIL_REJECTED
            self._dead(record, "rejected")
            return
        if action == "crash":
            # Still unacked: the worker's exit hands it back (worker_gone), past the limit or not.
            self.crashed += 1
            if delivery is not None:
                delivery.ended, delivery.outcome = ts, FAIL_CRASHED
            return
        # "none": the worker tells the broker nothing.
        if delivery is not None and delivery.ack.lost_with_worker:
            delivery.ended, delivery.outcome = ts, FAIL_LOST
            self.lost += 1
            self.lost_ids.append(record.msg_id)
            self._move(record, LOST)
        elif delivery is not None:
            delivery.ended, delivery.outcome = ts, FAIL_UNACKED
            self._move(record, UNACKED_DONE)

    def _dead(self, record: MessageRecord, reason: str) -> None:
        """The broker dead-letters the message (or drops it, with no target), for ``reason``."""
        record.death = reason
        if self.dead_target:
            self.dead_lettered += 1
            self._move(record, DEAD_LETTERED)
        else:
            self.dropped += 1
            self._move(record, DROPPED)

    def dead_letter_seen(self, msg_id: str, reason: str) -> None:
        """The dead-letter queue holds this message (read there): the broker's word over our inference."""
        record = self.records.get(msg_id)
        if record is None or record.state == DEAD_LETTERED:
            return
        if record.state == DROPPED:
            self.dropped -= 1
        if record.deliveries and record.deliveries[-1].outcome is None:
            record.deliveries[-1].outcome = "gone"
        record.death = reason or record.death
        self.dead_lettered += 1
        self._move(record, DEAD_LETTERED)

    def move_back(self, ids: list[str]) -> int:
        """Dead letters moved back to the work queue: ready again; returns how many were ours."""
        ours = 0
        for msg_id in ids:
            record = self.records.get(msg_id)
            if record is None or record.state != DEAD_LETTERED:
                continue
            self.dead_lettered -= 1
            self.moved_back += 1
            record.next_why = MOVED_BACK
            self._move(record, READY)
            ours += 1
        return ours

    def held_up(self, record: MessageRecord, by: MessageRecord) -> None:
        """A good task waited behind (or went back with) a failing one."""
        if record.bad or record.msg_id in self.delayed or len(self.delayed) >= 1000:
            return
        self.delayed[record.msg_id] = by.label()

    def _superseded(self, record: MessageRecord, worker: str, outcome: str, why: str) -> bool:
        """True when ``worker`` no longer has the message's latest delivery (someone else got it since).

        Then the news about ``worker`` only explains its own, already closed, delivery
        and the reason the next one was made; where the message is now stays as it is.
        """
        deliveries = record.deliveries
        if not deliveries or deliveries[-1].worker == worker:
            return False
        for index in range(len(deliveries) - 2, -1, -1):
            delivery = deliveries[index]
            if delivery.worker == worker:
                if delivery.outcome == SUPERSEDED:
                    delivery.outcome = outcome
                    if deliveries[index + 1].why == REDELIVERED:
                        deliveries[index + 1].why = why
                break
        return True

    def ack_lost_run(self, record: MessageRecord, ts: float, worker: str, reason: str) -> None:
        """``worker`` finished the message after the broker took its delivery back: worked, never acked.

        Usually the delivery was taken back while in progress (``returned`` with
        ``reason``). If the worker had reported it done and the ack had not left yet
        when the channel closed, that done is undone: the broker has the message again.
        """
        self.ack_lost += 1
        outcome = f"{ACK_LOST} ({reason.replace('-', ' ')})"
        deliveries = record.deliveries
        # The delivery taken back, wherever it is: a redelivery to the same worker may follow it.
        for delivery in reversed(deliveries):
            if delivery.worker == worker and delivery.outcome in _TAKEN_BACK_OUTCOMES:
                delivery.outcome = outcome
                return
        last = deliveries[-1] if deliveries else None
        if last is None or last.worker != worker or last.outcome != "done" or record.state != DONE:
            return
        record.done_count -= 1
        self.done_runs -= 1
        if record.done_count == 1:
            self.duplicates -= 1
        if record.done_count == 0:
            record.finished = False
            self.done_messages -= 1
            record.next_why = RETURN_REASONS.get(reason, REDELIVERED)
            self._move(record, READY)
        last.ended, last.outcome = ts, outcome

    def orphan(self, record: MessageRecord, worker: str) -> None:
        """``worker`` holds the message and its queue was just deleted: the broker forgot it.

        The worker still works it (its ack is accepted and goes nowhere); if it gives
        it back, or dies, the message is gone with the queue rather than requeued.
        A done-but-never-acked one (ack none) is gone at once.
        """
        deliveries = record.deliveries
        if not deliveries or deliveries[-1].worker != worker:
            return
        deliveries[-1].orphaned = True
        if record.state == UNACKED_DONE:
            self.deleted += 1
            self._move(record, DELETED)

    def queue_deleted(self, ts: float) -> int:
        """The queue was deleted at ``ts``: the messages waiting in it went with it; returns how many.

        Only messages we know to be ready (as ``purge`` does): one published elsewhere
        and never delivered to us is not in the record.
        """
        gone = [r for r in self.records.values() if r.state == READY and _ready_since(r) <= ts]
        for record in gone:
            self._move(record, DELETED)
        self.deleted += len(gone)
        return len(gone)

    def _lose(self, record: MessageRecord, cause: LostCause) -> None:
        record.lost_cause = cause
        self.lost += 1
        self.lost_by[cause] += 1
        self.lost_ids.append(record.msg_id)
        self._move(record, LOST)

    def lost_in_restart(self, ts: float, cause: LostCause = LostCause.TRANSIENT_QUEUE) -> int:
        """A transient queue or transient messages (``cause`` says which): what was waiting in the queue is gone."""
        gone = [r for r in self.records.values() if r.state == READY]
        for record in gone:
            if record.deliveries and record.deliveries[-1].outcome is None:
                record.deliveries[-1].ended, record.deliveries[-1].outcome = ts, "lost in broker restart"
            self._lose(record, cause)
        return len(gone)

    def vanished(self, before: float) -> int:
        """Ready messages the broker no longer has and no worker reported: lost unseen; returns how many.

        Under auto ack the broker forgets a message once it is written to the
        consumer's socket, and a worker killed before reading it never says it
        had it. The caller knows the queue is empty and every live worker quiet;
        only messages already waiting before ``before`` (when an auto-ack worker
        died) can have gone that way.
        """
        gone = [r for r in self.records.values() if r.state == READY and _ready_since(r) < before]
        for record in gone:
            self.lost_unseen += 1
            self._lose(record, LostCause.UNSEEN)
        return len(gone)

    def taken_by_others(self, count: int, before: float) -> int:
        """Mark up to ``count`` ready messages as taken by another consumer; returns how many were marked.

        The caller saw the broker's queue hold ``count`` fewer than our ready ones
        while none of our workers reported them. The queue hands out its oldest
        first, so the oldest we know as ready (by first sight; a requeued message
        keeps its place) that were ready before ``before`` are the ones taken.
        """
        marked = 0
        for record in self.records.values():
            if marked >= count:
                break
            if record.state == READY and _ready_since(record) <= before:
                record.next_why = FROM_OTHERS
                self._move(record, TAKEN)
                marked += 1
        self.taken += marked
        self.taken_ever += marked
        return marked

    def broker_restarted(self) -> None:
        """Messages back in the queue after a restart get redelivered for that reason."""
        for record in self.records.values():
            if record.state == READY and record.deliveries:
                record.next_why = AFTER_RESTART

    def purge(self, count: int) -> None:
        """Mark ready messages as purged (the broker says how many; we mark what we saw ready)."""
        marked = 0
        for record in list(self.records.values()):
            if marked >= count:
                break
            if record.state == READY:
                self._move(record, PURGED)
                marked += 1
        self.purged += marked

    # ----- figures

    def count(self, state: str) -> int:
        return self.state_counts[state]

    def recent(self, limit: int = 50) -> list[MessageRecord]:
        """The newest records, newest first."""
        out: list[MessageRecord] = []
        for msg_id in reversed(self.records):
            out.append(self.records[msg_id])
            if len(out) >= limit:
                break
        return out


def _open_delivery(deliveries: list[Delivery], worker: str | None) -> Delivery | None:
    """The delivery a worker's news closes: its own open one (two copies can be out at once), else the last if open."""
    if worker is not None:
        for delivery in reversed(deliveries):
            if delivery.worker == worker and delivery.outcome is None:
                return delivery
    last = deliveries[-1] if deliveries else None
    return last if last is not None and last.outcome is None else None


def _ready_since(record: MessageRecord) -> float:
    """When the message was (last) put in the queue: published, or given back by its last worker."""
    last = record.deliveries[-1].ended if record.deliveries else None
    return last if last is not None else (record.published or 0.0)
