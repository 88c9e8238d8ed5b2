"""When the broker steps in, on a real broker: a deleted queue, the ack timeout, an operator's close.

The queue deletion runs on the shared broker (the test's own queue). The ack
timeout needs a broker setting, so it runs on a private node of this module with
a 4 s ``consumer_timeout`` and a 0.25 s channel tick (RabbitMQ 3.x checks the
timeout on each tick, 60 s by default); the operator's closes run there too.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence

import pytest

from tests.conftest import WorkerFactory
from tests.helpers import WorkerProc, delete_queue, figures, publish, wait_until
from tui.model import observations as obs
from tui.model.ledger import AFTER_ACK_TIMEOUT, DELETED, DONE, FIRST
from tui.model.state import BUSY, CHANNEL_CLOSED, IDLE, QUEUE_DELETED, Model
from workers import local_node, protocol
from workers.broker import ConsumerInfo
from workers.local_node import LocalNode
from workers.monitor import QueueMonitor
from workers.protocol import AckLost, Cancelled, ChannelClosed, Connection, Done, Ready, Received, Returned

pytestmark = pytest.mark.broker

needs_rabbitmq = pytest.mark.skipif(
    local_node.rabbitmq_server_path() is None, reason="rabbitmq-server is not installed"
)

ACK_TIMEOUT = 4.0
TICK = 0.25


def fold(workers: Sequence[WorkerProc], *, before: float | None = None, prefix: str) -> Model:
    """The dashboard's model of these workers' events (merged by time, as the pool would fold them)."""
    model = Model(prefix=prefix)
    merged = sorted((e for w in workers for e in w.events), key=lambda e: e.ts)
    model.apply_all([e for e in merged if before is None or e.ts <= before])
    return model


# ----- a queue deleted under its consumers (the shared broker, our own queue)


@pytest.mark.timeout(60)
def test_a_deleted_queue_cancels_the_consumer_and_the_worker_declares_it_again(
    broker_url: str, queue_name: str, spawn_worker: WorkerFactory
) -> None:
    """The worker says the broker cancelled it, works what it held, declares the queue again and consumes.

    Before, it stopped receiving for good while it looked idle: a task published
    later stayed ready forever.
    """
    w1 = spawn_worker(queue_name, "w1", prefetch=2, seconds_per_dot=0.5, extra_args=["--compact-events"])
    w1.ready()
    first = publish(broker_url, queue_name, ["held....", "waiting", "ready"])
    w1.wait_event(Received, 2)
    assert [e.msg_id for e in w1.of(Received)] == first[:2], "prefetch 2: the third waits in the queue"
    deleted_at = time.time()
    delete_queue(broker_url, queue_name)

    [cancelled] = w1.wait_event(Cancelled, timeout=10)
    assert cancelled.reason == "queue-deleted"
    consuming_again = w1.wait_event(Ready, 2, timeout=10)[1]
    found = wait_until(lambda: figures(broker_url, queue_name), 10, "the queue declared again")
    assert found.consumers == 1
    # What it held is worked and acked: the acks are accepted (no channel closed), and go nowhere.
    w1.wait_for(lambda events: {e.msg_id for e in events if isinstance(e, Done)} >= set(first[:2]), 15, "held done")
    later = publish(broker_url, queue_name, ["later"])
    w1.wait_for(lambda events: later[0] in {e.msg_id for e in events if isinstance(e, Done)}, 15, "a later task")
    assert not w1.of(ChannelClosed) and not w1.of(Connection), w1.describe()
    assert all(e.acked for e in w1.of(Done))
    assert first[2] not in {e.msg_id for e in w1.of(Received)}, "the ready one went with the queue"

    # What the dashboard folds: its publisher's record, then the worker's events in time order.
    ordered = Model(prefix=first[0].rsplit("-", 1)[0])
    items = sorted(
        [*publisher_items(first, deleted_at - 1), *publisher_items(later, deleted_at + 0.5), *w1.events],
        key=lambda item: item.ts,
    )
    mid = Model(prefix=first[0].rsplit("-", 1)[0])
    mid.apply_all([item for item in items if item.ts <= consuming_again.ts])
    assert list(mid.workers["w1"].log)[-2:] == [f" [!] {QUEUE_DELETED}", " [*] queue declared again; consuming"]
    assert mid.workers["w1"].status == BUSY, "on the task it held"
    ordered.apply_all([obs.BrokerStatus(deleted_at - 2, "connected"), *items])
    ledger = ordered.ledger
    assert [ledger.records[m].state for m in [*first, *later]] == [DONE, DONE, DELETED, DONE]
    assert ordered.workers["w1"].status == IDLE
    now = time.time()
    ordered.apply(obs.QueueSample(now, 0, 1, 0))
    assert ordered.balance(now + 0.1)[:2] == (4, 4)
    assert w1.stop() == 0
    assert w1.bad_lines == [] and "Traceback" not in w1.stderr


def publisher_items(ids: Sequence[str], ts: float) -> list[obs.Observation]:
    """What the dashboard's publisher reports for tasks it published at ``ts``."""
    items: list[obs.Observation] = []
    for msg_id in ids:
        items += [obs.Published(msg_id, ts, "?"), obs.Confirmed(msg_id, ts)]
    return items


# ----- a private node with a short ack timeout


@pytest.fixture(scope="module")
def node() -> Iterator[LocalNode]:
    if local_node.rabbitmq_server_path() is None:
        pytest.skip("rabbitmq-server is not installed")
    private = LocalNode(ack_timeout=ACK_TIMEOUT, channel_tick=TICK)
    try:
        private.start()
        yield private
    finally:
        private.destroy()


def unacked_on(node: LocalNode, queue: str) -> int:
    """The queue's unacked count from the queue itself (rabbitmqctl), not the management API's trailing figure."""
    done = node.rabbitmqctl("list_queues", "-q", "--no-table-headers", "name", "messages_unacknowledged")
    for line in done.stdout.splitlines():
        name, _, count = line.rpartition("\t")
        if name == queue:
            return int(count)
    raise AssertionError(f"no queue {queue!r} on {node.node_name}: {done.stdout!r} {done.stderr!r}")


@needs_rabbitmq
@pytest.mark.timeout(90)
def test_an_ack_timeout_takes_the_task_back_and_the_late_finish_is_worked_ack_lost(node: LocalNode) -> None:
    """w1's 8 s task outlives the 4 s ack timeout: the broker closes its channel and gives the task to w2.

    The model folded from the workers' events then has w1 not busy, the broker's
    unacked (w2's one), the redelivery explained by the timeout, and w1's late
    finish as worked-ack-lost: done 1, runs 1, no duplicate.
    """
    queue = "ack-timeout"
    w1 = WorkerProc(node.url, queue, "w1", seconds_per_dot=1.0, extra_args=["--compact-events"])
    w2: WorkerProc | None = None
    try:
        w1.ready()
        ids = publish(node.url, queue, ["slow........"])  # 8 s at 1 s a dot
        w1.wait_event(Received)
        # Only now w2: the broker hands the task out again to it, since w1 consumes again only once free.
        w2 = WorkerProc(node.url, queue, "w2", seconds_per_dot=0.35, extra_args=["--compact-events"])  # 2.8 s
        w2.ready()

        [closed] = w1.wait_event(ChannelClosed, timeout=ACK_TIMEOUT + 10)
        assert closed.code == 406 and "delivery acknowledgement on channel 1 timed out" in closed.reason
        assert protocol.taken_back_reason(closed.code, closed.reason) == "ack-timeout"
        held_since = w1.of(Received)[0].ts
        assert ACK_TIMEOUT - 0.1 <= closed.ts - held_since <= ACK_TIMEOUT + TICK + 1.0, "the timeout, on a tick"
        [returned] = w1.wait_event(Returned)
        assert (returned.msg_id, returned.reason) == (ids[0], "ack-timeout")
        [again] = w2.wait_event(Received, timeout=10)
        assert (again.msg_id, again.redelivered) == (ids[0], True)
        broker_unacked = unacked_on(node, queue)  # w2 holds it for 2.8 s; this takes about 1 s
        taken = time.time()
        assert not w1.of(AckLost), "w1 still works on it"

        model = fold([w1, w2], before=taken, prefix=ids[0].rsplit("-", 1)[0])
        card = model.workers["w1"]
        assert card.status == CHANNEL_CLOSED and card.status != BUSY and card.current is None
        assert card.finishing is not None and card.finishing.seconds == 8.0
        assert model.derived_unacked() == broker_unacked == 1
        record = model.ledger.records[ids[0]]
        assert [d.why for d in record.deliveries] == [FIRST, AFTER_ACK_TIMEOUT]

        [lost] = w1.wait_event(AckLost, timeout=15)
        assert (lost.msg_id, lost.reason) == (ids[0], "ack-timeout")
        assert lost.ts - held_since >= 7.9, "the work ran to its end"
        w2.wait_event(Done, timeout=15)
        w1.wait_event(Ready, 2, timeout=5)  # consuming again, once the task the broker took back is finished
        assert not w1.of(Done), "no done for a finish the broker never saw"
        assert unacked_on(node, queue) == 0

        model = fold([w1, w2], prefix=ids[0].rsplit("-", 1)[0])
        ledger = model.ledger
        assert (ledger.done_messages, ledger.done_runs, ledger.duplicates, ledger.ack_lost) == (1, 1, 0, 1)
        record = ledger.records[ids[0]]
        assert record.lifeline() == (
            f"{record.label()} -> w1 -> worked, ack lost (ack timeout) -> requeued -> w2 (redelivered) -> done"
        )
        assert model.workers["w1"].status == IDLE and model.derived_unacked() == 0
        assert w1.stop() == 0 and w2.stop() == 0
        assert w1.bad_lines == [] == w2.bad_lines
    finally:
        w1.close()
        if w2 is not None:
            w2.close()


def api(node: LocalNode, method: str, path: str, headers: dict[str, str] | None = None) -> object:
    token = base64.b64encode(b"guest:guest").decode()
    request = urllib.request.Request(
        node.management_url + path, method=method, headers={"Authorization": f"Basic {token}", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


def connection_named(node: LocalNode, prefix: str) -> str:
    """The broker's name of the connection whose client named it ``prefix...``, once it is listed."""

    def find() -> str | None:
        listed = api(node, "GET", "/api/connections?columns=name,user_provided_name")
        assert isinstance(listed, list)
        names = [c["name"] for c in listed if str(c.get("user_provided_name", "")).startswith(prefix)]
        return names[0] if names else None

    return wait_until(find, 15, f"a connection named {prefix!r}", interval=0.3)


@needs_rabbitmq
@pytest.mark.timeout(60)
def test_an_operators_close_reason_reaches_the_workers_connection_event(node: LocalNode) -> None:
    """DELETE /api/connections/{name} with X-Reason, as an operator does: the worker says why, then reconnects."""
    w1 = WorkerProc(node.url, "closed-by-operator", "w1")
    try:
        w1.ready()
        name = connection_named(node, "dispatch-lab w1 (pid")
        reason = "class over [red]now[/]"
        api(node, "DELETE", f"/api/connections/{urllib.parse.quote(name, safe='')}", {"X-Reason": reason})
        [lost] = w1.wait_event(Connection, where=lambda e: e.state == "lost", timeout=10)
        assert lost.reason == f"CONNECTION_FORCED - {reason}"
        w1.wait_event(Connection, where=lambda e: e.state == "restored", timeout=15)
        model = fold([w1], prefix="-")
        assert f" [!] CONNECTION_FORCED - {reason}" in model.workers["w1"].log
        assert w1.stop() == 0
    finally:
        w1.close()


class Statuses:
    """A QueueListener that keeps the monitor's broker_status calls."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def queue_sampled(
        self, ts: float, ready: int, consumers: int, unacked: int | None, external: Sequence[ConsumerInfo] | None
    ) -> None:
        pass

    def broker_status(self, ts: float, state: str, attempt: int, message: str) -> None:
        with self._lock:
            self.seen.append((state, message))

    def queue_purged(self, ts: float, count: int) -> None:
        pass

    def states(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self.seen)


@needs_rabbitmq
@pytest.mark.timeout(60)
def test_an_operators_close_reason_reaches_the_dashboards_monitor(node: LocalNode) -> None:
    """``rabbitmqctl close_connection <pid> "reason"`` on the dashboard's own connection: its status says why."""
    listener = Statuses()
    monitor = QueueMonitor(node.url, "closed-by-operator", listener, interval=0.1)
    monitor.start()
    try:
        wait_until(lambda: ("connected", "") in listener.states(), 15, "the monitor connected")
        listed = node.rabbitmqctl("list_connections", "-q", "--no-table-headers", "pid", "client_properties")
        pids = [line.split("\t")[0] for line in listed.stdout.splitlines() if "dispatch-lab monitor" in line]
        assert len(pids) == 1, listed.stdout
        closed = node.rabbitmqctl("close_connection", pids[0], "maintenance [b]window[/b]")
        assert closed.returncode == 0, closed.stderr
        lost = wait_until(lambda: [m for s, m in listener.states() if s == "lost"], 10, "the monitor's lost status")
        assert lost == ["the broker closed the connection: CONNECTION_FORCED - maintenance [b]window[/b]"]
        wait_until(lambda: listener.states()[-1] == ("connected", ""), 15, "the monitor reconnected")
    finally:
        monitor.stop()


@needs_rabbitmq
@pytest.mark.timeout(60)
def test_a_task_the_broker_took_back_is_cut_short_with_a_lost_connection_not_reported_twice(node: LocalNode) -> None:
    """Finishing a task taken back (ack timeout), the worker loses its connection: no ack_lost, no second return."""
    queue = "taken-back-then-cut"
    w1 = WorkerProc(node.url, queue, "w1", seconds_per_dot=1.0)
    try:
        w1.ready()
        ids = publish(node.url, queue, ["slow........"])
        w1.wait_event(ChannelClosed, timeout=ACK_TIMEOUT + 10)
        name = connection_named(node, "dispatch-lab w1 (pid")
        api(node, "DELETE", f"/api/connections/{urllib.parse.quote(name, safe='')}", {"X-Reason": "cut"})
        w1.wait_event(Connection, where=lambda e: e.state == "restored", timeout=15)
        [again] = w1.wait_event(Received, 2, timeout=10)[1:]
        assert (again.msg_id, again.redelivered) == (ids[0], True)
        assert not w1.of(AckLost), "cut short: it was not worked to its end"
        assert [(e.tag, e.reason) for e in w1.of(Returned)] == [(1, "ack-timeout")], "returned once"
        model = fold([w1], prefix=ids[0].rsplit("-", 1)[0])
        card = model.workers["w1"]
        assert card.finishing is None and card.taken_back == {} and card.in_hand == 1
        assert model.ledger.ack_lost == 0
        assert [lane.outcome for lane in card.lane][:1] == ["returned"]
    finally:
        w1.close()
