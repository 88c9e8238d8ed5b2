"""Tests failing tasks against the real broker: each failure mode, each queue type, the delivery limit, dead letters.

A body with ``!`` fails when the worker reaches it. What the broker then does is
read back from the broker itself (its queue counts, the dead-letter queue's
headers), not from the worker's word.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace

import pika
import pika.exceptions
import pytest

from tests.conftest import WorkerFactory
from tests.helpers import delete_queue, figures, of_kind, wait_figures, wait_until
from workers import protocol
from workers.broker import BrokerError, connect, declare_task_queue, server_version
from workers.dead_letters import move_back, peek
from workers.new_task import Publisher
from workers.settings import QueueSpec, QueueType, parse_version

QUORUM_LIMIT_3 = QueueSpec(type=QueueType.QUORUM, delivery_limit=3, dead_letter=True)


@pytest.fixture
def spec_queue(broker_url: str) -> Iterator[Callable[[QueueSpec], str]]:
    """Declares a unique queue as a spec says; it and its dead-letter queue are deleted afterwards."""
    made: list[str] = []

    def declare(spec: QueueSpec) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        made.append(name)
        connection = connect(broker_url, name="dispatch-lab tests")
        try:
            declare_task_queue(connection.channel(), name, spec=spec)
        finally:
            connection.close()
        return name

    yield declare
    for name in made:
        delete_queue(broker_url, name)
        delete_queue(broker_url, name + ".dead")


def publish_to(url: str, queue: str, spec: QueueSpec, bodies: list[str]) -> list[str]:
    publisher = Publisher(url, queue, name="dispatch-lab tests")
    publisher.queue_spec = spec
    with publisher:
        return list(publisher.publish_many(bodies))


def spec_args(spec: QueueSpec) -> list[str]:
    return spec.argv()


def dead_letters(url: str, queue: str) -> list[tuple[str | None, str]]:
    connection = connect(url, name="dispatch-lab tests")
    try:
        letters = peek(connection, queue + ".dead") or []
    finally:
        connection.close()
    return [(letter.msg_id, letter.reason) for letter in letters]


# ----- failing tasks, each failure mode


def test_requeue_nacks_a_failing_task_back_to_the_head_in_a_loop_and_a_live_switch_to_reject_ends_it(
    broker_url: str, spec_queue: Callable[[QueueSpec], str], spawn_worker: WorkerFactory
) -> None:
    spec = QueueSpec()
    queue = spec_queue(spec)
    worker = spawn_worker(queue, "w1", prefetch=1, extra_args=["--on-fail", "requeue"])
    assert worker.ready().on_fail == "requeue"
    bad, after = publish_to(broker_url, queue, spec, ["Bad task!", "after"])
    # nack + requeue puts it back at the head: the same task again and again, "after" waits behind it.
    failures = worker.wait_event(protocol.Failed, count=10, timeout=15)
    assert {(f.msg_id, f.action) for f in failures} == {(bad, "requeue")}
    deliveries = [e for e in worker.of(protocol.Received) if e.msg_id == bad]
    assert deliveries[0].redelivered is False and all(d.redelivered for d in deliveries[1:])
    assert not [e for e in worker.of(protocol.Received) if e.msg_id == after], "a poison task at the head blocks"
    assert all(d.delivery_count is None for d in deliveries), "a classic queue counts no deliveries"

    worker.send(protocol.SetFailMode("reject"))
    worker.wait_event(protocol.OnFail, where=lambda e: e.on_fail == "reject")
    worker.wait_event(protocol.Failed, where=lambda e: e.action == "reject")
    worker.wait_event(protocol.Done, where=lambda e: e.msg_id == after)
    # No dead-letter target: the broker dropped it.
    wait_figures(broker_url, queue, lambda f: f.ready == 0, 5, "the rejected task dropped")
    assert figures(broker_url, queue + ".dead") is None
    assert worker.stop() == 0
    assert len([e for e in worker.of(protocol.Received) if e.msg_id == bad]) == len(worker.of(protocol.Failed))


def test_the_dots_before_the_bang_are_worked_and_the_tasks_finished_before_it_stay_acked(
    broker_url: str, spec_queue: Callable[[QueueSpec], str], spawn_worker: WorkerFactory
) -> None:
    spec = QueueSpec()
    queue = spec_queue(spec)
    worker = spawn_worker(queue, "w1", prefetch=10, seconds_per_dot=0.1, extra_args=["--on-fail", "reject"])
    worker.ready()
    ids = publish_to(broker_url, queue, spec, ["one", "two.", "Slow..! after the bang...", "four"])
    failed = worker.wait_event(protocol.Failed)[0]
    started = next(e for e in worker.of(protocol.Started) if e.msg_id == ids[2])
    assert started.seconds == pytest.approx(0.2), "two dots before the '!' are worked"
    assert failed.ts - started.ts >= 0.2
    worker.wait_event(protocol.Done, count=3)
    assert worker.stop() == 0
    # The multiple ack of one and two must not have taken the rejected task with it, nor four.
    assert figures(broker_url, queue) is not None and figures(broker_url, queue).ready == 0  # type: ignore[union-attr]
    assert [e.msg_id for e in worker.of(protocol.Done)] == [ids[0], ids[1], ids[3]]
    assert len(worker.of(protocol.Received)) == 4, "nothing came back"


def test_reject_dead_letters_into_the_dead_queue_with_the_brokers_reason(
    broker_url: str, spec_queue: Callable[[QueueSpec], str], spawn_worker: WorkerFactory
) -> None:
    spec = QueueSpec(dead_letter=True)
    queue = spec_queue(spec)
    worker = spawn_worker(queue, "w1", extra_args=["--on-fail", "reject", *spec.argv()])
    worker.ready()
    ok, bad = publish_to(broker_url, queue, spec, ["fine", "Bad task!"])
    worker.wait_event(protocol.Failed, where=lambda e: e.action == "reject")
    worker.wait_event(protocol.Done, where=lambda e: e.msg_id == ok)
    wait_figures(broker_url, queue + ".dead", lambda f: f.ready == 1, 5, "one dead letter")
    assert dead_letters(broker_url, queue) == [(bad, "rejected")]
    # Peeking leaves it there.
    assert figures(broker_url, queue + ".dead").ready == 1  # type: ignore[union-attr]
    worker.stop()
    # Moved back, it is the work queue's again: one ready task, none dead.
    connection = connect(broker_url, name="dispatch-lab tests")
    try:
        assert move_back(connection, queue + ".dead", queue) == [bad]
    finally:
        connection.close()
    assert figures(broker_url, queue + ".dead").ready == 0  # type: ignore[union-attr]
    assert figures(broker_url, queue).ready == 1  # type: ignore[union-attr]


def test_crash_exits_mid_task_and_the_broker_requeues_it_while_work_done_before_stays_done(
    broker_url: str, spec_queue: Callable[[QueueSpec], str], spawn_worker: WorkerFactory
) -> None:
    spec = QueueSpec()
    queue = spec_queue(spec)
    worker = spawn_worker(queue, "w1", prefetch=10, extra_args=["--on-fail", "crash"])
    worker.ready()
    ids = publish_to(broker_url, queue, spec, ["a", "b", "Bad task!", "c."])
    assert worker.wait_exit(15) == 1, "an uncaught exception's exit code"
    failed = worker.of(protocol.Failed)
    assert [(f.msg_id, f.action) for f in failed] == [(ids[2], "crash")]
    assert not worker.of(protocol.Stopped), "a crash says no goodbye"
    assert "--on-fail crash" in worker.stderr
    # The failed task and the one waiting behind it are back; a and b were acked before the exit.
    wait_figures(broker_url, queue, lambda f: f.ready == 2 and f.consumers == 0, 10, "two tasks back")
    successor = spawn_worker(queue, "w2", prefetch=1, extra_args=["--on-fail", "reject"])
    successor.wait_event(protocol.Failed, where=lambda e: e.msg_id == ids[2])
    back = successor.of(protocol.Received)
    assert back[0].msg_id == ids[2] and back[0].redelivered


def test_under_auto_ack_a_failure_tells_the_broker_nothing(
    broker_url: str, spec_queue: Callable[[QueueSpec], str], spawn_worker: WorkerFactory
) -> None:
    spec = QueueSpec()
    queue = spec_queue(spec)
    worker = spawn_worker(queue, "w1", ack="auto", extra_args=["--on-fail", "requeue"])
    worker.ready()
    publish_to(broker_url, queue, spec, ["Bad task!"])
    assert worker.wait_event(protocol.Failed)[0].action == "none"
    worker.stop()
    assert figures(broker_url, queue).ready == 0  # type: ignore[union-attr]  # forgotten at delivery: gone


# ----- quorum queues: delivery counts, the delivery limit, dead letters


def test_a_quorum_queue_counts_deliveries_and_dead_letters_past_the_limit(
    broker_url: str, spec_queue: Callable[[QueueSpec], str], spawn_worker: WorkerFactory
) -> None:
    queue = spec_queue(QUORUM_LIMIT_3)
    worker = spawn_worker(queue, "w1", prefetch=1, extra_args=["--on-fail", "requeue", *QUORUM_LIMIT_3.argv()])
    worker.ready()
    good, bad = publish_to(broker_url, queue, QUORUM_LIMIT_3, ["good.", "Bad task!"])
    wait_figures(broker_url, queue + ".dead", lambda f: f.ready == 1, 15, "the poison task dead-lettered")
    worker.wait_event(protocol.Done, where=lambda e: e.msg_id == good)
    counts = [e.delivery_count for e in worker.of(protocol.Received) if e.msg_id == bad]
    # Measured on 3.10.8: a consumer's first delivery carries no header (basic.get's says 0); limit 3 lets
    # 4 deliveries through, and the fifth would be past it.
    assert counts == [None, 1, 2, 3]
    assert len([f for f in worker.of(protocol.Failed) if f.msg_id == bad]) == 4
    assert dead_letters(broker_url, queue) == [(bad, "delivery_limit")]
    worker.stop()


def test_a_crash_counts_toward_the_delivery_limit_for_every_task_the_worker_held(
    broker_url: str, spec_queue: Callable[[QueueSpec], str], spawn_worker: WorkerFactory
) -> None:
    """The poison task takes innocent ones with it: prefetch above 1 and crashes, on a quorum queue."""
    spec = QueueSpec(type=QueueType.QUORUM, delivery_limit=1, dead_letter=True)
    queue = spec_queue(spec)
    ids = publish_to(broker_url, queue, spec, ["Bad task!", "innocent."])
    for round_ in range(2):
        worker = spawn_worker(queue, f"w{round_}", prefetch=10, seconds_per_dot=2.0,
                              extra_args=["--on-fail", "crash", *spec.argv()])  # fmt: skip
        assert worker.wait_exit(15) == 1
        assert [e.msg_id for e in worker.of(protocol.Received)] == ids
    wait_figures(broker_url, queue + ".dead", lambda f: f.ready == 2, 10, "both dead-lettered")
    assert sorted(dead_letters(broker_url, queue)) == sorted([(ids[0], "delivery_limit"), (ids[1], "delivery_limit")])


def test_a_quorum_queue_refuses_global_qos_by_closing_the_connection(
    broker_url: str, spec_queue: Callable[[QueueSpec], str]
) -> None:
    queue = spec_queue(QueueSpec(type=QueueType.QUORUM))
    assert not QueueType.QUORUM.global_qos
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=5, global_qos=True)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as refused:
            channel.basic_consume(queue, lambda *args: None)
            connection.process_data_events(1.0)
        assert refused.value.reply_code == 540 and "global qos" in refused.value.reply_text
    finally:
        if connection.is_open:
            connection.close()


def test_unlimited_prefetch_on_a_quorum_queue_stops_at_2000_in_flight(
    broker_url: str, spec_queue: Callable[[QueueSpec], str]
) -> None:
    spec = QueueSpec(type=QueueType.QUORUM)
    queue = spec_queue(spec)
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        for _ in range(2100):
            channel.basic_publish("", queue, b"t")
        wait_figures(broker_url, queue, lambda f: f.ready == 2100, 10, "2100 ready")
        consumer = connection.channel()
        consumer.basic_qos(prefetch_count=0)
        got: list[int] = []
        consumer.basic_consume(queue, lambda ch, method, props, body: got.append(method.delivery_tag))
        wait_until(lambda: len(got) >= 2000 or connection.process_data_events(0.1), 10, "deliveries")
        connection.process_data_events(1.0)
        assert len(got) == 2000, "prefetch 0 on a quorum queue is not 'everything at once'"
    finally:
        connection.close()


# ----- a queue declared otherwise, and the broker's version


@pytest.mark.parametrize(
    ("existing", "asked", "words"),
    [
        (QueueSpec(), QueueSpec(type=QueueType.QUORUM), "'x-queue-type' (set by --queue-type)"),
        (QUORUM_LIMIT_3, replace(QUORUM_LIMIT_3, delivery_limit=5), "'5', the broker has '3'"),
        (QueueSpec(), QueueSpec(dead_letter=True), "'x-dead-letter-exchange' (set by --dead-letter)"),
    ],
)
def test_a_queue_declared_with_other_arguments_is_one_sentence_naming_the_flag(
    broker_url: str, spec_queue: Callable[[QueueSpec], str], existing: QueueSpec, asked: QueueSpec, words: str
) -> None:
    queue = spec_queue(existing)
    connection = connect(broker_url, name="dispatch-lab tests")
    try:
        with pytest.raises(BrokerError) as refused:
            declare_task_queue(connection.channel(), queue, spec=asked)
    finally:
        if connection.is_open:
            connection.close()
    message = str(refused.value)
    assert words in message and message.count("\n") == 0 and "already exists" in message


def test_the_brokers_version_comes_from_its_server_properties(broker_url: str) -> None:
    connection = connect(broker_url, name="dispatch-lab tests")
    try:
        version = parse_version(server_version(connection))
    finally:
        connection.close()
    assert version is not None and version >= (3, 8)


def test_worker_refuses_a_transient_quorum_queue_in_one_line(broker_url: str, spawn_worker: WorkerFactory) -> None:
    worker = spawn_worker("never-declared", "w1", extra_args=["--queue-type", "quorum", "--transient"])
    assert worker.wait_exit(10) == 2
    assert "always durable" in worker.stderr and "Traceback" not in worker.stderr
    assert not of_kind(worker.events, protocol.Ready)
