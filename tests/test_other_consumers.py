"""Consumers the dashboard does not run, against the real broker: the tutorial's worker.py, a second dashboard.

Each test runs the dashboard's backend (its pool, queue monitor and publisher:
what the app starts) headless and folds what it reports into a model, beside a
tutorial-style pika worker written here or a second backend on the same queue.
When everything is done, no task of ours may be "ready" in the ledger and the
balance must hold.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator

import pika
import pytest
from rich.console import Console

from tests.helpers import run_module
from tui.engine.backend import Backend, LabConfig
from tui.launch import preflight
from tui.model.ledger import READY, TAKEN
from tui.model.state import Model
from tui.view.widgets.queue_panel import _rows as queue_rows
from workers.broker import ManagementApi
from workers.settings import DispatchMode

DOT = 0.05


class TutorialWorker:
    """The tutorial's worker.py: prefetch 1, work in the callback (a dot a tick), then a manual ack."""

    def __init__(self, url: str, queue: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.queue_declare(queue=queue, durable=True)
        self.channel.basic_qos(prefetch_count=1)
        self.channel.basic_consume(queue=queue, on_message_callback=self._callback)
        self.done: list[str | None] = []
        """The message ids it acked, in order (appended on its own thread)."""
        self._thread = threading.Thread(target=self.channel.start_consuming, name="worker.py", daemon=True)
        self._thread.start()

    def _callback(self, channel: object, method: object, properties: object, body: bytes) -> None:
        time.sleep(body.count(b".") * DOT)
        self.done.append(getattr(properties, "message_id", None))
        self.channel.basic_ack(delivery_tag=getattr(method, "delivery_tag", 0))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.connection.add_callback_threadsafe(self.channel.stop_consuming)
        self._thread.join(10)
        self.connection.close()


@pytest.fixture
def tutorial_workers(broker_url: str) -> Iterator[Callable[[str], TutorialWorker]]:
    started: list[TutorialWorker] = []

    def start(queue: str) -> TutorialWorker:
        worker = TutorialWorker(broker_url, queue)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


class Dashboard:
    """One dashboard's backend, headless, with the model it feeds."""

    def __init__(self, url: str, queue: str, management: ManagementApi | None, *, use_api: bool) -> None:
        config = LabConfig(url=url, queue=queue, workers=1, mode=DispatchMode(1, "manual"), seconds_per_dot=DOT)
        api = None
        if use_api:
            # A fresh API object per dashboard, as each dashboard makes its own; preflight as the launcher does.
            base = management.base if management is not None else None
            api = preflight(config if base is None else _with_base(config, base), Console(file=io.StringIO()))
        self.backend = Backend(config, management=api)
        self.model = Model(queue=queue, mode=config.mode, prefix=self.backend.prefix)

    def fold(self) -> None:
        self.model.apply_all(self.backend.inbox.drain())

    def ours(self, ids: list[str | None]) -> set[str]:
        return {i for i in ids if i is not None and i.startswith(self.backend.prefix + "-")}

    def by_state(self, state: str) -> set[str]:
        return {r.msg_id for r in self.model.ledger.records.values() if r.state == state}

    def describe(self) -> str:
        ledger = self.model.ledger
        lines = [f"states {dict(+ledger.state_counts)}, balance {self.model.balance(time.time())}"]
        lines.append(f"others took {self.model.others.took} acked {self.model.others.acked}")
        lines += [r.lifeline() for r in ledger.recent(30)]
        return "\n".join(lines)


def _with_base(config: LabConfig, base: str) -> LabConfig:
    from dataclasses import replace

    return replace(config, management_url=base)


def until(dashboards: list[Dashboard], condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for dashboard in dashboards:
            dashboard.fold()
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n" + _describe(dashboards))
        time.sleep(0.05)


def _describe(dashboards: list[Dashboard]) -> str:
    return "\n".join(d.describe() for d in dashboards)


def settled(dashboard: Dashboard) -> bool:
    model = dashboard.model
    return model.ledger.count(READY) == 0 and model.balance(time.time())[2] is True


@pytest.fixture
def dashboards() -> Iterator[list[Dashboard]]:
    started: list[Dashboard] = []
    yield started
    for dashboard in started:
        dashboard.backend.shutdown()


def start(dashboards: list[Dashboard], dashboard: Dashboard) -> Dashboard:
    dashboards.append(dashboard)
    dashboard.backend.start()
    until([dashboard], lambda: any(w.status == "idle" for w in dashboard.model.workers.values()), 20, "w1 ready")
    return dashboard


def test_worker_py_beside_our_worker_with_the_management_api(
    broker_url: str,
    queue_name: str,
    management: ManagementApi | None,
    tutorial_workers: Callable[[str], TutorialWorker],
    dashboards: list[Dashboard],
) -> None:
    if management is None:
        pytest.skip("the management API does not answer")
    tutorial = tutorial_workers(queue_name)
    lab = start(dashboards, Dashboard(broker_url, queue_name, management, use_api=True))
    model = lab.model
    until([lab], lambda: model.queue.consumers == 2 and model.others.management, 15, "both consumers, the API")

    lab.backend.publish([f"pane {n}." for n in range(10)])  # what the publisher pane does
    assert run_module("workers.new_task", ["--queue", queue_name, "--count", "4", "cli."], broker_url).code == 0
    total = 14
    until([lab], lambda: len(tutorial.done) + model.ledger.done_messages == total, 20, "every task done")
    theirs = lab.ours(tutorial.done)
    assert theirs, f"worker.py took none of ours, nothing was tested: {tutorial.done}"
    until([lab], lambda: settled(lab), 30, "no ledger row ready and the balance holding")

    assert lab.by_state(TAKEN) == theirs, lab.describe()
    ledger = model.ledger
    assert ledger.taken == len(theirs) and ledger.confirmed == 10
    foreign = 4 - sum(1 for i in tutorial.done if i not in theirs)  # the new-task tasks our worker did
    assert model.balance(time.time()) == (10 + foreign, 10 + foreign, True)
    # The API's channel figures for worker.py: everything it took since we came, acked.
    until([lab], lambda: model.others.acked == len(tutorial.done), 15, "the API's counts to catch up")
    assert model.others.took == len(tutorial.done)
    rows = {row[0]: row[1:] for row in queue_rows(model, time.time(), False)}
    assert rows["taken"] == (str(len(theirs)), "bold", "by others, inferred")
    assert rows["others took"][0] == str(len(tutorial.done))
    assert rows["balance"][2].startswith("holds: ")


def test_worker_py_beside_our_worker_without_the_management_api(
    broker_url: str,
    queue_name: str,
    tutorial_workers: Callable[[str], TutorialWorker],
    dashboards: list[Dashboard],
) -> None:
    tutorial = tutorial_workers(queue_name)
    lab = start(dashboards, Dashboard(broker_url, queue_name, None, use_api=False))
    model = lab.model
    until([lab], lambda: model.queue.consumers == 2, 10, "both consumers")
    lab.backend.publish([f"pane {n}." for n in range(6)])
    assert run_module("workers.new_task", ["--queue", queue_name, "--count", "2", "cli."], broker_url).code == 0
    until([lab], lambda: len(tutorial.done) + model.ledger.done_messages == 8, 20, "every task done")
    theirs = lab.ours(tutorial.done)
    assert theirs, f"worker.py took none of ours, nothing was tested: {tutorial.done}"
    until([lab], lambda: lab.by_state(TAKEN) == theirs and model.ledger.count(READY) == 0, 10, "inferred")
    # worker.py is still attached and nothing counts what it holds: the panel says the balance cannot close.
    time.sleep(0.5)  # a few more samples, to show the verdict stays open (the wait below has a deadline)
    lab.fold()
    now = time.time()
    assert model.balance(now)[2] is None and model.uncounted_others(now) == 1
    rows = queue_rows(model, now, False)
    assert ("balance", "…", "dim", "can't close: 1 other") in rows
    assert ("", "", "dim", "no mgmt API to count it") in rows
    tutorial.stop()
    until([lab], lambda: settled(lab), 10, "the balance to hold once worker.py is gone")
    foreign = 2 - sum(1 for i in tutorial.done if i not in theirs)
    assert model.balance(time.time()) == (6 + foreign, 6 + foreign, True)


def test_two_dashboards_on_one_queue(
    broker_url: str, queue_name: str, management: ManagementApi | None, dashboards: list[Dashboard]
) -> None:
    use_api = management is not None
    one = start(dashboards, Dashboard(broker_url, queue_name, management, use_api=use_api))
    two = start(dashboards, Dashboard(broker_url, queue_name, management, use_api=use_api))
    both = [one, two]
    until(both, lambda: one.model.queue.consumers == 2 and two.model.queue.consumers == 2, 10, "two consumers")
    if use_api:
        until(both, lambda: one.model.others.management and two.model.others.management, 15, "the API")
    for n in range(5):
        one.backend.publish([f"one {n}."])
        two.backend.publish([f"two {n}.."])
    until(both, lambda: one.model.ledger.done_messages + two.model.ledger.done_messages == 10, 20, "all done")
    if not use_api:
        # Each is the other's unseen consumer: neither balance can close while the other runs.
        two.backend.shutdown()
    until(both, lambda: settled(one) and (not use_api or settled(two)), 30, "both settled")
    for me, other in ((one, two), (two, one)):
        if not use_api and me is two:
            continue
        done_by_other = {r.msg_id for r in other.model.ledger.records.values() if r.state == "done"}
        assert me.by_state(TAKEN) == me.ours(list(done_by_other)), _describe(both)
        assert me.model.ledger.foreign == len(other.ours(list(me.by_state("done"))))
        published, accounted, holds = me.model.balance(time.time())
        assert holds is True and published == accounted == 5 + me.model.ledger.foreign
