"""The publishers when the broker steps in: a memory alarm blocks them, a message too big is refused.

And a reporting worker, whose reports are publishes: an alarm holds them, not its work; a closed
reporting connection is opened again.

One private node serves the module (an alarm on the shared broker would block
every other test), with a small ``max_message_size``. An alarm is raised with
``rabbitmqctl set_vm_memory_high_watermark absolute 1`` and cleared by setting
it back; RabbitMQ then blocks each connection that publishes and says why
(``connection.blocked``, "low on memory").
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pika
import pytest

from tests.helpers import (
    ROOT,
    SPAWNED,
    WorkerProc,
    child_env,
    figures,
    heard_on_exchange,
    run_module,
    wait_figures,
    wait_until,
)
from tui.engine.backend import Backend, LabConfig
from tui.engine.pool import Inbox
from tui.model.ledger import DONE, FAILED, PUBLISHING
from tui.model.state import Model
from tui.view.widgets.publisher import publish_status
from workers import protocol
from workers.local_node import LocalNode, rabbitmq_server_path
from workers.new_task import Publisher

pytestmark = pytest.mark.skipif(rabbitmq_server_path() is None, reason="rabbitmq-server is not installed")

T = TypeVar("T")
MAX_SIZE = 4096
"""The node's max_message_size: a bigger message is refused (RabbitMQ's default is 128 MiB)."""
HOLD = 2.0
"""Seconds a test watches a blocked publisher to see that nothing gets confirmed meanwhile."""


@pytest.fixture(scope="module")
def node() -> Iterator[LocalNode]:
    node = LocalNode(management=False, max_message_size=MAX_SIZE)
    try:
        node.start()
        yield node
    finally:
        node.destroy()


@pytest.fixture
def queue(node: LocalNode) -> str:
    return f"alarm-{uuid.uuid4().hex[:10]}"


def rabbitmqctl(node: LocalNode, *args: str) -> str:
    """Run rabbitmqctl against the private node (its own HOME, so its own Erlang cookie); its output."""
    server = rabbitmq_server_path()
    assert server is not None
    ctl = Path(server).with_name("rabbitmqctl")
    return subprocess.run([str(ctl), "-n", node.node_name, *args], env=node.environment(), check=True,
                          capture_output=True, text=True, timeout=60).stdout  # fmt: skip


@contextmanager
def memory_alarm(node: LocalNode) -> Iterator[None]:
    """A memory alarm on the private node while inside; cleared on the way out, pass or fail."""
    rabbitmqctl(node, "set_vm_memory_high_watermark", "absolute", "1")
    try:
        yield
    finally:
        rabbitmqctl(node, "set_vm_memory_high_watermark", "0.4")


def until(inbox: Inbox, model: Model, condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """Fold what arrived into the model until ``condition`` holds; fail after ``timeout``."""

    def check() -> T | None:
        model.apply_all(inbox.drain())
        return condition()

    return wait_until(check, timeout, what)


def holds_for(inbox: Inbox, model: Model, condition: Callable[[], bool], seconds: float, what: str) -> None:
    """``condition`` stays true for ``seconds`` while everything that arrives is folded (a window, not a wait)."""
    try:
        wait_until(lambda: not (model.apply_all(inbox.drain()) or condition()), seconds, what)
    except AssertionError:
        return  # the window passed with the condition true throughout
    raise AssertionError(f"{what} stopped holding")


def all_ready(url: str, queue: str) -> list[tuple[str | None, bool, bytes]]:
    """Every ready message's id, redelivered flag and body; left in the queue."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        found = []
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                return found
            found.append((properties.message_id, bool(method.redelivered), body))
    finally:
        connection.close()


@contextmanager
def lab(node: LocalNode, queue: str, workers: int) -> Iterator[tuple[Backend, Model]]:
    backend = Backend(LabConfig(url=node.url, queue=queue, workers=workers, seconds_per_dot=0.01))
    model = Model(queue=queue, prefix=backend.prefix)
    backend.start()
    try:
        yield backend, model
    finally:
        backend.shutdown()


# ----- the dashboard's publisher


@pytest.mark.timeout(90)
def test_the_pane_publisher_waits_out_a_memory_alarm_says_so_and_publishes_once(node: LocalNode, queue: str) -> None:
    with lab(node, queue, workers=1) as (backend, model):
        until(backend.inbox, model, lambda: model.our_consumers() == 1, 30, "w1 consuming")
        with memory_alarm(node):
            backend.publish(["Task."])
            until(backend.inbox, model, lambda: model.publish_blocked, 15, "the block in the model")
            assert model.publish_blocked == "low on memory"
            [record] = model.ledger.records.values()
            holds_for(backend.inbox, model, lambda: model.ledger.confirmed == 0, HOLD, "nothing confirmed")
            assert record.state == PUBLISHING and model.publish_blocked == "low on memory"
            status = publish_status(model, model.publish_blocked_since + 3).plain
            assert status == "⏸ blocked by the broker: low on memory for 3s · sends wait: 1 unconfirmed", status
        until(backend.inbox, model, lambda: record.state == DONE, 20, "the task confirmed and done")
        assert model.publish_blocked is None
        # Nothing else in the broker: no second copy ready, none held by w1.
        until(backend.inbox, model, lambda: (figures(node.url, queue) or None) and figures(node.url, queue).ready == 0
              and not model.workers["w1"].held, 10, "the queue empty")  # fmt: skip
        ledger = model.ledger
        assert (ledger.published, ledger.confirmed, ledger.failed, ledger.republished) == (1, 1, 0, 0)
        assert (len(record.deliveries), ledger.done_runs, ledger.duplicates) == (1, 1, 0)
        assert record.lifeline() == "#1 -> w1 -> done"
        assert model.workers["w1"].received == 1


@pytest.mark.timeout(90)
def test_the_pane_publisher_shows_a_refused_message_with_the_brokers_reason_then_goes_on(
    node: LocalNode, queue: str
) -> None:
    with lab(node, queue, workers=0) as (backend, model):
        backend.publish(["x" * (MAX_SIZE + 1), "Small."])
        until(backend.inbox, model, lambda: model.ledger.confirmed == 1, 20, "the small one confirmed")
        big, small = model.ledger.records.values()
        assert big.state == FAILED and small.confirmed
        assert model.publish_failure is not None
        label, reason = model.publish_failure
        expected = f"message size {MAX_SIZE + 1} is larger than configured max size {MAX_SIZE}"
        assert label == "#1" and expected in reason and "refused the message" in reason, reason
        assert expected in big.failure
        assert expected in publish_status(model, 0).plain
        assert [(i, body) for i, _, body in all_ready(node.url, queue)] == [(small.msg_id, b"Small.")]


def close_publisher_connection(node: LocalNode, reason: str) -> None:
    """What an operator does: ``rabbitmqctl close_connection`` on the dashboard's publisher connection."""
    server = rabbitmq_server_path()
    assert server is not None
    listed = subprocess.run(
        [str(Path(server).with_name("rabbitmqctl")), "-n", node.node_name, "list_connections", "pid",
         "client_properties", "--silent"],
        env=node.environment(), check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    [pid] = [line.split("\t")[0] for line in listed.splitlines() if '"dispatch-lab publisher"' in line]
    rabbitmqctl(node, "close_connection", pid, reason)


@pytest.mark.timeout(90)
def test_a_publish_cut_off_while_blocked_is_sent_again_under_its_id_and_shown_as_a_republish(
    node: LocalNode, queue: str
) -> None:
    with lab(node, queue, workers=1) as (backend, model):
        until(backend.inbox, model, lambda: model.our_consumers() == 1, 30, "w1 consuming")
        with memory_alarm(node):
            backend.publish(["Task."])
            until(backend.inbox, model, lambda: model.publish_blocked, 15, "the block in the model")
            [record] = model.ledger.records.values()
            close_publisher_connection(node, "maintenance [/]")
            until(backend.inbox, model, lambda: record.republished, 15, "the republish in the model")
            until(backend.inbox, model, lambda: model.publish_blocked, 15, "blocked again, on the new connection")
            assert model.ledger.confirmed == 0
        until(backend.inbox, model, lambda: record.state == DONE, 20, "the task confirmed and done")
        until(backend.inbox, model, lambda: (figures(node.url, queue) or None) and figures(node.url, queue).ready == 0
              and not model.workers["w1"].held, 10, "the queue empty")  # fmt: skip
        ledger = model.ledger
        # RabbitMQ drops what it had not read from a connection it closes: one copy; had it read it, two.
        assert record.lifeline() in (
            "#1 -> republished -> w1 -> done",
            "#1 -> republished -> w1 -> done -> w1 (copy) -> done",
        ), record.lifeline()
        assert (ledger.published, ledger.confirmed, ledger.republished, ledger.redeliveries) == (1, 1, 1, 0)
        assert model.workers["w1"].received == len(record.deliveries)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_block_longer_than_pikas_default_timeout_still_publishes_once(node: LocalNode, queue: str) -> None:
    """The issue's run: blocked past 30 s, the old publisher gave up, sent the task again, and both copies came."""
    with lab(node, queue, workers=1) as (backend, model):
        until(backend.inbox, model, lambda: model.our_consumers() == 1, 30, "w1 consuming")
        with memory_alarm(node):
            backend.publish(["Task."])
            until(backend.inbox, model, lambda: model.ledger.published == 1, 15, "the task sent")
            holds_for(backend.inbox, model, lambda: model.ledger.confirmed == 0, 40, "nothing confirmed")
        [record] = model.ledger.records.values()
        until(backend.inbox, model, lambda: record.state == DONE, 20, "the task confirmed and done")
        until(backend.inbox, model, lambda: (figures(node.url, queue) or None) and figures(node.url, queue).ready == 0
              and not model.workers["w1"].held, 10, "the queue empty")  # fmt: skip
        assert model.workers["w1"].received == 1
        assert record.lifeline() == "#1 -> w1 -> done"


# ----- new-task


@pytest.mark.timeout(90)
def test_new_task_waits_with_a_message_while_blocked_then_sends_once(node: LocalNode, queue: str) -> None:
    with memory_alarm(node):
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "workers.new_task", "--queue", queue, "Task."],
            cwd=ROOT, env=child_env(node.url), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        SPAWNED.append(proc)
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        assert line == (
            "new_task: the broker blocks publishers (low on memory): "
            "waiting up to 30 s for it to take the task; Ctrl+C gives up.\n"
        ), line
        assert proc.poll() is None, "still waiting"
        assert figures(node.url, queue) is not None and figures(node.url, queue).ready == 0
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, (out, err)
    assert out == b" [x] Sent 'Task.'\n"
    assert err.decode().startswith("new_task: the broker takes publishes again (blocked "), err
    wait_figures(node.url, queue, lambda f: f.ready == 1, 10, "the task in the queue")
    assert [(body, redelivered) for _, redelivered, body in all_ready(node.url, queue)] == [(b"Task.", False)]


@pytest.mark.timeout(90)
def test_new_task_gives_up_after_its_timeout_and_says_the_task_may_still_be_delivered(
    node: LocalNode, queue: str
) -> None:
    with memory_alarm(node):
        result = run_module("workers.new_task", ["--queue", queue, "--timeout", "1.5", "Task."], node.url)
        assert result.code == 1, result
        assert "Traceback" not in result.output and result.stdout == ""
        lines = result.stderr.splitlines()
        assert lines[0] == (
            "new_task: the broker blocks publishers (low on memory): "
            "waiting up to 1.5 s for it to take the task; Ctrl+C gives up."
        )
        assert lines[1] == (
            "new_task: The broker blocked publishing (low on memory) for over 1.5 s, so this gave up waiting; "
            "the task may still be delivered: it was sent, and the broker reads it once the alarm clears."
        ), lines
        assert len(lines) == 2, lines
    # And so it is: what the broker had read is queued once the alarm clears.
    wait_figures(node.url, queue, lambda f: f.ready == 1, 15, "the task delivered after all")


@pytest.mark.timeout(60)
def test_new_task_interrupted_while_blocked_exits_at_once_and_says_the_task_may_still_be_delivered(
    node: LocalNode, queue: str
) -> None:
    with memory_alarm(node):
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "workers.new_task", "--queue", queue, "Task."],
            cwd=ROOT, env=child_env(node.url), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        SPAWNED.append(proc)
        assert proc.stderr is not None
        assert "waiting up to 30 s" in proc.stderr.readline().decode()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)  # a polite close of a blocked connection would wait for the alarm
    assert proc.returncode == 130, (out, err)
    said = err.decode().strip()
    assert said == "new_task: interrupted after 0 of 1 tasks; the one being sent may still be delivered.", said


@pytest.mark.timeout(60)
def test_new_task_says_the_broker_refused_the_message_and_why(node: LocalNode, queue: str, tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"." * (MAX_SIZE + 1))
    result = run_module("workers.new_task", ["--queue", queue, "--file", str(big)], node.url)
    assert result.code == 1, result
    assert result.stderr == (
        f"new_task: The broker refused the message: PRECONDITION_FAILED - message size {MAX_SIZE + 1} "
        f"is larger than configured max size {MAX_SIZE}.\n"
    ), result.stderr
    assert wait_figures(node.url, queue, lambda f: f is not None, 5, "the queue").ready == 0


# ----- a worker that reports through the broker


@pytest.mark.timeout(90)
def test_a_reporting_worker_works_through_a_memory_alarm_and_stops_at_once(node: LocalNode, queue: str) -> None:
    # Its reports are publishes, so the alarm holds them; its work and acks must go on: the reports
    # have a connection of their own, and the worker never waits for it (nor for its close).
    tasks = 40
    with Publisher(node.url, queue) as publisher:  # before the alarm: a publisher waits an alarm out
        for i in range(tasks):
            publisher.publish(f"task {i}.")
    worker: WorkerProc | None = None
    try:
        with heard_on_exchange(node.url, queue) as heard:
            with memory_alarm(node):
                worker = WorkerProc(
                    node.url, queue, "carol", seconds_per_dot=0.02, events=False, extra_args=["--report"]
                )
                wait_until(lambda: worker.lines.count(" [x] Done") == tasks, 30, f"{tasks} tasks done under the alarm")
                worker.interrupt()
                began = time.monotonic()
                assert worker.wait_exit(10) == 0
                stopped_in = time.monotonic() - began
                done_heard = sum(isinstance(event, protocol.Done) for event in heard)
            assert stopped_in < 3.0, f"the stop waited {stopped_in:.1f} s for the blocked reporting connection"
            # Every ack reached the broker although the reports could not: nothing came back to the queue.
            assert wait_figures(node.url, queue, lambda f: f is not None, 5, "the queue").ready == 0
            assert done_heard < tasks, "the alarm did not hold the reports: this test would show nothing"
            assert "Traceback" not in worker.stderr, worker.stderr
    finally:
        if worker is not None:
            worker.close()


@pytest.mark.timeout(90)
def test_a_reporting_worker_whose_report_connection_the_broker_closes_reports_again(
    node: LocalNode, queue: str
) -> None:
    worker: WorkerProc | None = None
    try:
        with heard_on_exchange(node.url, queue) as heard:
            worker = WorkerProc(node.url, queue, "dave", seconds_per_dot=0.0, events=False, extra_args=["--report"])
            wait_until(lambda: any(isinstance(e, protocol.Ready) for e in heard), 15, "dave's ready heard")
            listed = rabbitmqctl(node, "-q", "list_connections", "pid", "client_properties")
            [pid] = [line.split()[0] for line in listed.splitlines() if "dave report" in line]
            rabbitmqctl(node, "close_connection", pid, "closed by the test [red]x[/]")
            wait_until(lambda: "reporting connection lost" in worker.stderr, 10, "the loss said on stderr")
            assert "closed by the test [red]x[/]" in worker.stderr  # the broker's words, as text
            # It reconnects on its own, and what it does afterwards is heard: a task published now.
            with Publisher(node.url, queue) as publisher:
                publisher.publish("after the loss")
            wait_until(
                lambda: any(isinstance(e, protocol.Done) for e in heard), 15, "the task done after the loss, heard"
            )
            assert worker.lines.count(" [x] Done") == 1
            worker.interrupt()
            assert worker.wait_exit(10) == 0
            wait_until(lambda: any(isinstance(e, protocol.Stopped) for e in heard), 5, "its stopped event heard")
    finally:
        if worker is not None:
            worker.close()
