"""Failing tasks, delivery limits and dead letters, replayed through the model.

Pure: no broker, no Textual. The events are what the workers write (tests/test_failures.py
shows the same on a real broker: the counts and the limit's arithmetic were measured there).
"""

from __future__ import annotations

from pathlib import Path

from tests.recordings import PREFIX, SETTLE, T0, Recorder, msg_id
from tui.engine.session_log import SessionLog, read
from tui.model import observations as obs
from tui.model.ledger import (
    AFTER_CRASH,
    AFTER_FAILURE,
    DEAD_LETTERED,
    DROPPED,
    LOST,
    MOVED_BACK,
    READY,
)
from tui.model.state import Model
from tui.view.widgets.queue_panel import _rows as queue_rows
from tui.view.widgets.queue_panel import queue_kind
from workers import protocol
from workers.settings import DEFAULT_CONSUMER_TIMEOUT, FailMode, QueueSpec, QueueType

QUORUM_3 = QueueSpec(type=QueueType.QUORUM, delivery_limit=3, dead_letter=True)


def model_for(spec: QueueSpec, events: list[obs.Observation], *, version: str = "3.10.8") -> Model:
    model = Model(prefix=PREFIX, spec=spec, broker_version=version)
    model.apply_all(events)
    return model


def row(model: Model, label: str, now: float) -> tuple[str, str, str, str] | None:
    return next((r for r in queue_rows(model, now, model.stale(now)) if r[0] == label), None)


class Loop:
    """A recorder's helpers for one task going round: received (with a delivery count), started, failed."""

    def __init__(self, r: Recorder) -> None:
        self.r = r
        self.tags: dict[str, int] = {}

    def deliver(self, worker: str, seq: int, *, count: int | None, redelivered: bool) -> int:
        tag = self.tags[worker] = self.tags.get(worker, 0) + 1
        body = self.r.bodies[seq]
        self.r.add(protocol.Received(worker, self.r.now, tag, msg_id(seq), body, redelivered, count))
        self.r.add(protocol.Started(worker, self.r.now, tag, msg_id(seq), 0.0))
        return tag

    def fail(self, worker: str, seq: int, action: str, *, count: int | None = None, redelivered: bool = True) -> None:
        tag = self.deliver(worker, seq, count=count, redelivered=redelivered)
        self.r.add(protocol.Failed(worker, self.r.now, tag, msg_id(seq), action))

    def work(self, worker: str, seq: int) -> None:
        tag = self.deliver(worker, seq, count=None, redelivered=False)
        self.r.add(protocol.Done(worker, self.r.now, tag, msg_id(seq), True))


def start(r: Recorder, *workers: str) -> None:
    r.connected()
    r.sample(ready=0, consumers=0, unacked=0)
    for number, worker in enumerate(workers, 1):
        r.spawn(worker, 100 + number, prefetch=1)


def test_a_requeue_loop_shows_every_failure_its_count_and_its_rate() -> None:
    r = Recorder()
    start(r, "w1", "w2")
    r.publish("Bad task!")
    loop = Loop(r)
    for turn in range(80):
        loop.fail("w1" if turn % 2 == 0 else "w2", 1, "requeue", redelivered=turn > 0)
        r.after(0.1)
    model = model_for(QueueSpec(), r.events)
    record = model.ledger.records[msg_id(1)]
    assert (record.failures, model.ledger.failures, model.ledger.requeued) == (80, 80, 80)
    assert record.state == READY and record.next_why == AFTER_FAILURE
    assert record.lifeline().startswith("#1 -> w1 -> failed -> requeued -> w2 (redelivered) -> failed -> requeued")
    assert "… 74 more deliveries (80 failures in all) …" in record.lifeline()
    assert len(record.deliveries) + record.elided == 80, "a loop's deliveries are counted, not all kept"
    assert model.fail_rate(r.now) == 10.0, "ten failures a second: the loop's rate"
    assert model.workers["w1"].failed == 40 and model.workers["w2"].failed == 40
    failures = row(model, "failures", r.now)
    assert failures is not None and failures[1] == "80" and "worker events; 10.0/s" in failures[3]
    assert row(model, "requeued", r.now) is not None


def test_a_quorum_queue_dead_letters_the_poison_task_once_past_the_limit_and_the_balance_holds() -> None:
    r = Recorder()
    start(r, "w1")
    r.publish("good.", "Bad task!")
    loop = Loop(r)
    loop.work("w1", 1)
    for count in (None, 1, 2, 3):  # as 3.10.8 sends them: no header on the first delivery
        loop.fail("w1", 2, "requeue", count=count, redelivered=count is not None)
        r.after(0.2)
    r.after(SETTLE)
    r.sample(ready=0, consumers=1, unacked=0)
    model = model_for(QUORUM_3, r.events)
    ledger = model.ledger
    record = ledger.records[msg_id(2)]
    assert record.state == DEAD_LETTERED and record.death == "delivery_limit"
    assert [d.count for d in record.deliveries] == [0, 1, 2, 3]
    assert record.lifeline().endswith("failed -> nacked -> dead-lettered (over the delivery limit)")
    assert (ledger.dead_lettered, ledger.max_count, ledger.requeued) == (1, 3, 4)
    assert model.balance(r.now) == (2, 2, True)
    # The dead-letter queue read says the same, in the broker's words.
    seen = obs.DeadLetterSeen(msg_id(2), "delivery_limit", 1, "Bad task!")
    model.apply(obs.DeadLettersSampled(r.now, "task_queue.dead", 1, (seen,)))
    assert ledger.dead_lettered == 1 and model.dead.count == 1
    dead = row(model, "dead letters", r.now)
    assert dead is not None and dead[1] == "1"


def test_without_an_explicit_limit_only_a_4_x_broker_limits_quorum_deliveries() -> None:
    spec = QueueSpec(type=QueueType.QUORUM, dead_letter=True)
    assert Model(spec=spec, broker_version="3.10.8").delivery_limit()[0] is None
    limit, source = Model(spec=spec, broker_version="4.1.0").delivery_limit()
    assert limit == 20 and "4.0+" in source
    assert Model(spec=spec).delivery_limit()[0] is None  # unknown version: said, not guessed
    r = Recorder()
    start(r, "w1")
    r.publish("Bad task!")
    loop = Loop(r)
    for count in range(21):
        loop.fail("w1", 1, "requeue", count=count or None, redelivered=count > 0)
    assert model_for(spec, r.events, version="4.1.0").ledger.records[msg_id(1)].state == DEAD_LETTERED
    assert model_for(spec, r.events, version="3.10.8").ledger.records[msg_id(1)].state == READY


def test_reject_is_dead_lettered_with_a_target_and_dropped_without_one() -> None:
    r = Recorder()
    start(r, "w1")
    r.publish("Bad task!")
    Loop(r).fail("w1", 1, "reject", redelivered=False)
    with_target = model_for(QueueSpec(dead_letter=True), r.events)
    record = with_target.ledger.records[msg_id(1)]
    assert (
        record.state == DEAD_LETTERED
        and record.lifeline() == "#1 -> w1 -> failed -> rejected -> dead-lettered (rejected)"
    )
    without = model_for(QueueSpec(), r.events)
    assert without.ledger.records[msg_id(1)].state == DROPPED and without.ledger.dropped == 1
    # Moved back from the dead-letter queue: ready again, for the next try.
    with_target.apply(obs.DeadLettersMoved(r.now, "task_queue.dead", (msg_id(1),)))
    assert record.state == READY and record.next_why == MOVED_BACK
    assert (with_target.ledger.dead_lettered, with_target.ledger.moved_back, with_target.dead.moved) == (0, 1, 1)


def test_a_crash_hands_back_the_failing_task_and_the_ones_waiting_behind_it() -> None:
    r = Recorder()
    start(r, "w1", "w2")
    r.publish("Bad task!", "innocent.")
    r.receive("w1", 1, 2)
    r.start("w1", 1)
    r.add(protocol.Failed("w1", r.now, 1, msg_id(1), "crash"))
    r.add(obs.WorkerExited("w1", r.now + 0.1, 1))
    model = model_for(QueueSpec(), r.events)
    ledger = model.ledger
    bad, innocent = ledger.records[msg_id(1)], ledger.records[msg_id(2)]
    assert bad.state == READY and bad.next_why == AFTER_CRASH
    assert bad.lifeline() == "#1 -> w1 -> failed -> crashed -> requeued"
    assert innocent.state == READY and ledger.delayed == {msg_id(2): "#1"}
    assert ledger.crashed == 1 and model.workers["w1"].failed == 1


def test_a_failure_under_auto_ack_is_lost_the_broker_forgot_the_task() -> None:
    r = Recorder()
    start(r)
    r.spawn("w1", 101, prefetch=1, ack="auto")
    r.publish("Bad task!")
    Loop(r).fail("w1", 1, "none", redelivered=False)
    model = model_for(QueueSpec(), r.events)
    assert model.ledger.records[msg_id(1)].state == LOST and model.ledger.lost == 1


def test_the_failure_mode_and_the_queue_come_back_from_a_session_log(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = SessionLog(path)
    log.start()
    seen = (obs.DeadLetterSeen(msg_id(1), "rejected", 1, "Bad task!"),)
    log.add([
        obs.SessionStarted(T0, "q", PREFIX, 1, "manual", True, "amqp://guest:***@h/", "reject", "quorum", 3, True,
                           "3.10.8", 10.0, "set on the private node"),
        obs.FailModeRequested(T0 + 1, "crash"),
        obs.DeadLettersSampled(T0 + 2, "q.dead", 1, seen),
        obs.DeadLettersMoved(T0 + 3, "q.dead", (msg_id(1),)),
        protocol.OnFail("w1", T0 + 4, "crash"),
    ])  # fmt: skip
    log.close()
    items = list(read(path))
    assert [type(i).__name__ for i in items] == [
        "SessionStarted", "FailModeRequested", "DeadLettersSampled", "DeadLettersMoved", "OnFail",
    ]  # fmt: skip
    model = Model()
    model.apply_all(items)
    assert model.spec == QueueSpec(True, QueueType.QUORUM, 3, True) and model.on_fail is FailMode.CRASH
    assert model.ack_deadline() == (10.0, "set on the private node")
    assert model.dead.letters == seen and model.dead.moved == 1


def test_the_ack_deadline_is_known_told_or_assumed() -> None:
    assert Model().ack_deadline() == (DEFAULT_CONSUMER_TIMEOUT, "assumed: RabbitMQ's default")
    assert Model(ack_timeout=10.0, ack_timeout_source="--ack-timeout").ack_deadline() == (10.0, "--ack-timeout")
    # RabbitMQ 4.3 stopped timing out deliveries on classic queues (release notes; untested here).
    assert Model(broker_version="4.3.0").ack_deadline()[0] is None
    assert Model(broker_version="4.3.0", spec=QUORUM_3).ack_deadline()[0] == DEFAULT_CONSUMER_TIMEOUT


def test_a_requeue_loop_is_not_mistaken_for_tasks_taken_by_another_consumer() -> None:
    """Between its nack and its next delivery the task is ready in our record; the broker's queue never shows it."""
    r = Recorder()
    start(r, "w1")
    r.publish("Bad task!")
    loop = Loop(r)
    for turn in range(40):
        loop.fail("w1", 1, "requeue", redelivered=turn > 0)
        r.after(0.1)
        r.sample(ready=0, consumers=1)
    model = model_for(QueueSpec(), r.events)
    assert model.missing_from_queue(r.now) == 0 and model.ledger.taken == 0
    assert row(model, "", r.now) is None, "no 'of ours gone: checking' line"


def test_the_header_and_the_panel_name_the_queue_kind_alike() -> None:
    """A quorum queue is durable by nature: both say its type (the header said "(durable)" alone)."""
    assert queue_kind(Model(spec=QUORUM_3), True) == "quorum, limit 3, DLX"
    assert queue_kind(Model(spec=QueueSpec(type=QueueType.QUORUM)), True) == "quorum"
    assert queue_kind(Model(spec=QueueSpec()), True) == "durable"
    assert queue_kind(Model(spec=QueueSpec(durable=False)), False) == "transient"


def test_an_earlier_failure_read_after_another_workers_reject_is_put_in_its_place() -> None:
    """Each worker has its own pipe: w2's reject (the fix) can be read before w1's earlier requeue.

    Read in that order, w1's delivery counted as a move back from the dead-letter queue, and the
    lifeline ended "failed -> requeued -> dead-lettered" (test_nack_loop saw it under load).
    """
    r = Recorder()
    start(r, "w1", "w2")
    r.publish("Bad task!")
    loop = Loop(r)
    loop.fail("w1", 1, "requeue", redelivered=False)
    r.after(0.1)
    w1_events = r.events[-3:]  # the first delivery's received, started and failed: w1's pipe, read late
    del r.events[-3:]
    loop.fail("w2", 1, "reject")
    r.events.extend(w1_events)
    model = model_for(QueueSpec(dead_letter=True), r.events)
    record = model.ledger.records[msg_id(1)]
    assert record.state == DEAD_LETTERED
    assert record.lifeline() == (
        "#1 -> w1 -> failed -> requeued -> w2 (redelivered) -> failed -> rejected -> dead-lettered (rejected)"
    )
    ledger = model.ledger
    assert (ledger.dead_lettered, ledger.moved_back, ledger.requeued, ledger.rejected) == (1, 0, 1, 1)
    assert (ledger.deliveries, ledger.redeliveries) == (2, 1)
