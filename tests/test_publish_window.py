"""Publishing with a window of confirms in flight: each task confirmed once, in order; a return or nack finds its task.

Against the real broker: 10,000 tasks through the command line's engine
(``Publisher.stream``), the command itself and the dashboard's PublisherThread,
then consumed and counted by message id. The confirm bookkeeping (``multiple``
acks, a return before its ack, a nack) is also checked with made-up frames.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pika
import pika.frame
import pika.spec
import pytest

from tests.helpers import run_module, wait_until
from workers import new_task
from workers.monitor import PublisherThread
from workers.new_task import Outcome, Publisher, Settled

pytestmark = pytest.mark.broker

BURST = 10_000


def drain_ids(url: str, queue: str, expected: int, timeout: float = 60.0) -> list[str]:
    """Consume the queue (auto ack) and return every message id in the order the broker gave them."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    ids: list[str] = []
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1000)
        deadline = time.monotonic() + timeout
        # Once all are in, a quiet spell says no copy follows them.
        for method, properties, _body in channel.consume(queue, auto_ack=True, inactivity_timeout=0.3):
            if method is None:
                if len(ids) >= expected or time.monotonic() > deadline:
                    break
                continue
            ids.append(str(properties.message_id))
        channel.cancel()
    finally:
        connection.close()
    return ids


def numbered(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{n}" for n in range(1, count + 1)]


@pytest.mark.timeout(120)
def test_ten_thousand_tasks_from_the_stream_are_each_confirmed_once_in_order(broker_url: str, queue_name: str) -> None:
    most = 0
    with Publisher(broker_url, queue_name, prefix="w") as publisher:
        outcomes: list[Settled] = []
        for settled in publisher.stream([b"Hello World!"] * BURST):
            outcomes.append(settled)
            most = max(most, publisher.in_flight + 1)
    assert [s.outcome for s in outcomes] == [Outcome.CONFIRMED] * BURST
    assert [s.msg_id for s in outcomes] == numbered("w", BURST)
    assert most > 1, "a window of confirms in flight, not one at a time"
    assert drain_ids(broker_url, queue_name, BURST) == numbered("w", BURST)


@pytest.mark.timeout(120)
def test_new_task_publishes_ten_thousand_each_once_in_order(broker_url: str, queue_name: str) -> None:
    result = run_module("workers.new_task", ["--queue", queue_name, "--count", str(BURST)], broker_url, timeout=90)
    assert result.code == 0, result
    assert result.stdout == f" [x] Sent 'Hello World' x{BURST}\n" and result.stderr == ""
    ids = drain_ids(broker_url, queue_name, BURST)
    prefix = ids[0].rsplit("-", 1)[0]
    assert ids == numbered(prefix, BURST)


class Recorder:
    """A MonitorListener that keeps what the publisher thread said, in order."""

    def __init__(self) -> None:
        self.published: list[str] = []
        self.confirmed: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.republished: list[str] = []
        self.lock = threading.Lock()

    def task_published(self, ts: float, msg_id: str, body: str) -> None:
        self.published.append(msg_id)

    def task_confirmed(self, ts: float, msg_id: str) -> None:
        self.confirmed.append(msg_id)

    def task_failed(self, ts: float, msg_id: str, message: str) -> None:
        self.failed.append((msg_id, message))

    def task_republished(self, ts: float, msg_id: str, reason: str) -> None:
        self.republished.append(msg_id)

    def publisher_blocked(self, ts: float, reason: str) -> None:
        pass

    def publisher_unblocked(self, ts: float) -> None:
        pass

    def queue_sampled(self, *args: Any) -> None:
        pass

    def broker_status(self, ts: float, state: str, attempt: int, message: str) -> None:
        pass

    def queue_purged(self, ts: float, count: int) -> None:
        pass


@pytest.mark.timeout(120)
def test_the_pane_publishes_ten_thousand_with_confirms_in_flight_each_confirmed_once_in_order(
    broker_url: str, queue_name: str
) -> None:
    heard = Recorder()
    thread = PublisherThread(broker_url, queue_name, heard, prefix="p")
    most = [0]
    sent = thread.publisher.send

    def counting_send(body: str | bytes, msg_id: str | None = None) -> str:
        most[0] = max(most[0], thread.publisher.in_flight + 1)
        return sent(body, msg_id)

    thread.publisher.send = counting_send  # type: ignore[method-assign]
    thread.start()
    try:
        thread.submit(["Hello World!"] * 4000)
        thread.submit(["Hello World!"] * (BURST - 4000))
        wait_until(lambda: len(heard.confirmed) + len(heard.failed) >= BURST, 90, "every task settled")
        assert thread.pending == 0
    finally:
        thread.stop()
    expected = numbered("p", BURST)
    assert heard.published == expected
    assert heard.confirmed == expected, "each confirmed once, in order"
    assert (heard.failed, heard.republished) == ([], [])
    assert most[0] > 1, "a window of confirms in flight, not one at a time"
    assert drain_ids(broker_url, queue_name, BURST) == expected


@pytest.mark.timeout(60)
def test_a_return_in_a_window_reaches_the_task_that_was_unroutable(broker_url: str, queue_name: str) -> None:
    with Publisher(broker_url, queue_name, prefix="r") as publisher:
        for n in range(1, 11):
            # Tasks 3 and 7 go to a queue that does not exist: mandatory, so the broker returns them.
            publisher.queue = f"{queue_name}-missing" if n in (3, 7) else queue_name
            publisher.send(f"task {n}")
        assert publisher.in_flight == 10, "all ten in flight before any confirm is read"
        publisher.queue = queue_name
        publisher.wait_all()
        outcomes = {s.msg_id: s for s in publisher.take_settled()}
    assert sorted(outcomes, key=lambda i: int(i.split("-")[1])) == numbered("r", 10)
    returned = sorted(i for i, s in outcomes.items() if s.outcome is Outcome.RETURNED)
    assert returned == ["r-3", "r-7"]
    assert "could not route the task" in outcomes["r-3"].reason
    assert all(s.outcome is Outcome.CONFIRMED for i, s in outcomes.items() if i not in returned)
    assert drain_ids(broker_url, queue_name, 8) == [i for i in numbered("r", 10) if i not in returned]


@pytest.mark.timeout(60)
def test_a_nack_in_a_window_reaches_the_task_the_broker_refused(
    broker_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue of at most 3 that refuses more (x-overflow reject-publish): the broker nacks tasks 4 to 10."""

    def declare_small(channel: Any, queue: str, *, durable: bool = True, spec: Any = None) -> int:
        arguments = {"x-max-length": 3, "x-overflow": "reject-publish"}
        return int(channel.queue_declare(queue=queue, durable=durable, arguments=arguments).method.message_count)

    monkeypatch.setattr(new_task, "declare_task_queue", declare_small)
    with Publisher(broker_url, queue_name, prefix="n") as publisher:
        # A nack goes out at once, a confirm once the persistent task is on disk: they come in any order.
        outcomes = sorted(publisher.stream([f"task {n}" for n in range(1, 11)]), key=lambda s: int(s.msg_id[2:]))
    assert [(s.msg_id, s.outcome) for s in outcomes] == [
        (f"n-{n}", Outcome.CONFIRMED if n <= 3 else Outcome.NACKED) for n in range(1, 11)
    ]
    assert outcomes[5].reason == f"The broker refused the message for queue {queue_name!r} (nack)."
    assert drain_ids(broker_url, queue_name, 3) == numbered("n", 3)


# ----- the bookkeeping, with made-up frames


def confirm(tag: int, *, multiple: bool = False, nack: bool = False) -> pika.frame.Method:
    method = pika.spec.Basic.Nack(tag, multiple) if nack else pika.spec.Basic.Ack(tag, multiple)
    return pika.frame.Method(1, method)


def unplugged(count: int) -> Publisher:
    """A publisher with ``count`` tasks on record as sent, no connection: frames are fed by hand."""
    publisher = Publisher("amqp://guest:guest@localhost:1/%2F", "q", prefix="t")
    for n in range(1, count + 1):
        publisher._unsettled[n] = f"t-{n}"
        publisher._tags[f"t-{n}"] = n
    publisher._next_tag = count + 1
    return publisher


def test_multiple_acks_settle_every_task_up_to_their_tag_once() -> None:
    publisher = unplugged(6)
    publisher._on_confirm(confirm(2))  # a single ack out of order first
    publisher._on_confirm(confirm(3, multiple=True))
    publisher._on_confirm(confirm(3, multiple=True))  # said twice: settles nothing more
    publisher._on_confirm(confirm(6, multiple=True, nack=True))
    assert [(s.msg_id, s.outcome) for s in publisher.take_settled()] == [
        ("t-2", Outcome.CONFIRMED),
        ("t-1", Outcome.CONFIRMED),
        ("t-3", Outcome.CONFIRMED),
        ("t-4", Outcome.NACKED),
        ("t-5", Outcome.NACKED),
        ("t-6", Outcome.NACKED),
    ]
    assert publisher.in_flight == 0 and publisher._oldest == 7


def test_a_return_marks_its_task_until_the_ack_that_settles_it() -> None:
    publisher = unplugged(3)
    publisher._on_return(None, pika.spec.Basic.Return(312, "NO_ROUTE"), pika.BasicProperties(message_id="t-2"), b"")
    publisher._on_return(None, pika.spec.Basic.Return(312, "NO_ROUTE"), pika.BasicProperties(message_id="x"), b"")
    publisher._on_confirm(confirm(3, multiple=True))
    assert [(s.msg_id, s.outcome) for s in publisher.take_settled()] == [
        ("t-1", Outcome.CONFIRMED),
        ("t-2", Outcome.RETURNED),
        ("t-3", Outcome.CONFIRMED),
    ]


def test_pika_still_buffers_writes_where_the_publisher_joins_them(broker_url: str, queue_name: str) -> None:
    """``_coalesce_writes`` reaches into pika 1.4.4's transport; if pika moves its send buffer, this says so."""
    with Publisher(broker_url, queue_name) as publisher:
        publisher.send("a")
        publisher.send("b")
        transport = publisher._connection._impl._transport  # type: ignore[union-attr]
        assert len(transport._tx_buffers) > 1, "each frame buffered on its own"
        new_task._coalesce_writes(publisher._connection)
        assert len(transport._tx_buffers) == 1
        publisher.wait_all()
        assert [s.outcome for s in publisher.take_settled()] == [Outcome.CONFIRMED] * 2
