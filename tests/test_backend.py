"""The backend as the one door for commands, and the one factory that wires its pipeline.

The keys, the palette, scenarios and the headless runner all call these; here
they are called directly. The restart tests run real workers on the shared broker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from tui.engine.backend import Backend, InboxReport, LabConfig, Refused, build_pipeline
from tui.engine.pool import Inbox
from tui.model import observations as obs
from workers import protocol


def fold_until(backend: Backend, seen: list[object], condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Collect what the backend's threads report until ``condition`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}: {seen[-10:]}"
        time.sleep(0.05)
        seen.extend(backend.inbox.drain())


def test_one_factory_wires_pool_monitor_and_publisher_to_one_inbox() -> None:
    inbox = Inbox()
    pipeline = build_pipeline(LabConfig(url="amqp://guest:guest@localhost/%2F", queue="q"), inbox=inbox)
    assert pipeline.inbox is inbox and pipeline.pool.inbox is inbox
    report = pipeline.monitor.listener
    assert isinstance(report, InboxReport) and report.inbox is inbox and report.pool is pipeline.pool
    assert pipeline.publisher.listener is report
    assert pipeline.publisher.publisher.prefix == pipeline.prefix


def test_add_worker_past_the_limit_is_refused_and_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = Backend(LabConfig(url="amqp://guest:guest@localhost/%2F", queue="q"))
    monkeypatch.setattr(backend.pool, "MAX_WORKERS", 0)
    assert backend.add_worker() == Refused("At most 0 workers.")
    assert not backend.pool.processes and len(backend.inbox) == 0


def test_restart_broker_without_a_node_of_its_own_is_refused() -> None:
    backend = Backend(LabConfig(url="amqp://guest:guest@localhost/%2F", queue="q"))
    called: list[object] = []
    assert backend.restart_broker(called.append, called.append) is None
    assert not called and len(backend.inbox) == 0


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_restart_starts_the_worker_again_once_its_process_is_gone(broker_url: str, queue_name: str) -> None:
    backend = Backend(LabConfig(url=broker_url, queue=queue_name, workers=1, seconds_per_dot=0.01))
    seen: list[object] = []
    gave_up = threading.Event()
    backend.start()
    try:
        fold_until(backend, seen, lambda: any(type(e) is protocol.Ready for e in seen), 20, "w1 ready")
        backend.restart("w1", gave_up.set)
        spawned = lambda: [e for e in seen if type(e) is obs.WorkerSpawned]  # noqa: E731
        fold_until(backend, seen, lambda: len(spawned()) == 2, 20, "w1 started again")
        exited = [i for i, e in enumerate(seen) if type(e) is obs.WorkerExited]
        assert exited and exited[0] < seen.index(spawned()[1]), "started again before the old process was gone"
        assert spawned()[1].worker == "w1" and spawned()[1].pid != spawned()[0].pid
        assert not gave_up.is_set()
    finally:
        backend.shutdown()


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_restart_gives_up_on_a_worker_still_busy_and_starts_no_second_one(
    broker_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = Backend(LabConfig(url=broker_url, queue=queue_name, workers=1, seconds_per_dot=1.0))
    monkeypatch.setattr(backend, "RESTART_WAIT", 0.5)
    seen: list[object] = []
    gave_up = threading.Event()
    backend.start()
    try:
        backend.publish(["Task......"])  # six seconds of work
        fold_until(backend, seen, lambda: any(type(e) is protocol.Started for e in seen), 20, "w1 at work")
        backend.restart("w1", gave_up.set)
        assert gave_up.wait(5), "the restart never gave up"
        seen.extend(backend.inbox.drain())
        assert sum(type(e) is obs.WorkerSpawned for e in seen) == 1
        assert backend.pool.running() == ["w1"], "the busy worker was not left to finish its task"
    finally:
        backend.shutdown()
