"""Tests of a class on one broker: workers that report through the events exchange, and dashboards that watch them."""

from __future__ import annotations

import os
import signal
import time

from tests.conftest import WorkerFactory
from tests.helpers import heard_on_exchange, wait_until
from tests.test_app import Lab, run_lab
from tui.engine.backend import LabConfig, _is_ours
from tui.model import observations as obs
from tui.model.ledger import DONE
from tui.model.state import Model
from workers import protocol, report
from workers.new_task import Publisher


def test_a_reporting_worker_sends_on_the_exchange_what_it_writes_on_stdout(
    broker_url: str, queue_name: str, spawn_worker: WorkerFactory
) -> None:
    heard: list[tuple[str, str, int, bytes, bool]] = []
    kinds = (protocol.Ready, protocol.Received, protocol.Started, protocol.Done, protocol.Stopped)
    feed = report.ReportFeed(broker_url, queue_name, lambda *got: heard.append(got))
    feed.start()
    try:
        assert feed.bound.wait(10), "the feed's queue was never bound"
        worker = spawn_worker(queue_name, "alice-laptop", seconds_per_dot=0.0, extra_args=["--report"])
        worker.ready()
        with Publisher(broker_url, queue_name) as publisher:
            for i in range(20):
                publisher.publish(f"task {i}")
        worker.wait_event(protocol.Done, 20, timeout=20)
        worker.close_stdin()
        assert worker.wait_exit() == 0

        def over_the_broker() -> list[protocol.Event]:
            return [e for _, _, _, data, _ in heard for e in protocol.decode_lines(data)[0] if isinstance(e, kinds)]

        wait_until(lambda: protocol.Stopped in {type(e) for e in over_the_broker()}, 10, "the stopped event")
        sent = over_the_broker()
        assert {(name, pid) for name, _, pid, _, _ in heard} == {("alice-laptop", worker.proc.pid)}
        assert all(host == report.short_host() for _, host, _, _, _ in heard)
        assert not any(control for *_, control in heard), "started without --accept-control: it says so"
        assert sent == [e for e in worker.events if isinstance(e, kinds)]
        assert len(heard) < len(sent)  # batched, not a message per event
    finally:
        feed.stop()


def test_a_full_buffer_drops_events_and_counts_them_without_waiting() -> None:
    # Nothing listens on port 1: the reporter never connects, and offering must not wait for it.
    reporter = report.Reporter("amqp://guest:guest@127.0.0.1:1/%2F", "q", "w", buffer_bytes=1000)
    reporter.start()
    try:
        line = protocol.encode(protocol.Alive("w", 1.0, 60)).encode()
        began = time.perf_counter()
        for _ in range(200):
            reporter.offer(line)
        assert time.perf_counter() - began < 0.1
        kept = 1000 // len(line)
        assert reporter.dropped == 200 - kept
        # The next batch it sends says how many so far.
        data = reporter._take()
        assert data.count(b"\n") == kept + 1
        dropped = protocol.decode(data.splitlines()[-1])
        assert dropped == protocol.Dropped("w", dropped.ts, 200 - kept) if dropped else False
    finally:
        reporter.close(0.5)


def test_a_name_with_a_dot_cannot_report(spawn_worker: WorkerFactory, queue_name: str) -> None:
    worker = spawn_worker(queue_name, "alice.laptop", extra_args=["--report"])
    assert worker.wait_exit() == 2
    assert "without '.'" in worker.stderr and "Traceback" not in worker.stderr


def test_two_reporting_workers_show_as_remote_cards_and_a_silent_one_is_marked(
    broker_url: str, queue_name: str, spawn_worker: WorkerFactory
) -> None:
    names = ("alice-laptop", "bob-laptop")
    started: dict[str, object] = {}

    async def scenario(lab: Lab) -> None:
        assert lab.backend.feed is not None
        await lab.until(lab.backend.feed.bound.is_set, 10, "the feed bound")
        workers = {
            name: spawn_worker(queue_name, name, seconds_per_dot=0.05, extra_args=["--report"]) for name in names
        }
        started.update(workers)
        await lab.until(lambda: all(w.events for w in workers.values()), 20, "both workers ready")
        await lab.until(
            lambda: set(lab.model.workers) == set(names) and len(lab.app.query(".worker-card")) == 2, 10, "two cards"
        )
        lab.backend.publish([f"task {i}." for i in range(10)])
        await lab.until(lambda: lab.model.ledger.count(DONE) == 10, 30, "ten tasks done")
        for name, worker in workers.items():
            state = lab.model.workers[name]
            done = len(worker.of(protocol.Done))
            assert state.remote and state.pid == worker.proc.pid and state.host == report.short_host()
            assert (state.received, state.done) == (len(worker.of(protocol.Received)), done)
            await lab.until(lambda n=name: "remote" in str(lab.card(n).border_title), 5, "the remote mark")
            assert f"remote {report.short_host()}:{worker.proc.pid}" in str(lab.card(name).border_title)
        assert all(w.done for w in lab.model.workers.values()), "round-robin over two workers: both worked"
        for record in lab.ours():
            assert record.state == DONE and record.deliveries[-1].worker in names
            assert record.deliveries[-1].worker in record.lifeline()
        # The balance counts their work: published = done, once the broker's figures settle.
        await lab.until(lambda: lab.model.balance(time.time())[2] is True, 20, "the balance to hold")
        # Nothing of theirs counts as another consumer: they have cards.
        assert lab.model.others.surplus == 0

        # A worker that stops answering (SIGSTOP, a closed laptop) is marked silent, with how long.
        bob = workers["bob-laptop"]
        os.kill(bob.proc.pid, signal.SIGSTOP)
        try:
            await lab.until(lambda: "silent for" in str(lab.card("bob-laptop").border_title), 10, "bob marked silent")
            assert "silent for" not in str(lab.card("alice-laptop").border_title)
        finally:
            os.kill(bob.proc.pid, signal.SIGCONT)
        # It comes back: the same card, no longer silent.
        await lab.until(lambda: "silent" not in str(lab.card("bob-laptop").border_title), 10, "bob back")
        assert len(lab.app.query(".worker-card")) == 2

        # One that stops says so and its card shows it exited.
        workers["alice-laptop"].close_stdin()
        assert workers["alice-laptop"].wait_exit() == 0
        await lab.until(lambda: not lab.model.workers["alice-laptop"].alive, 10, "alice exited")

    run_lab(broker_url, queue_name, scenario, workers=0)
    assert started


def test_reports_of_our_own_workers_are_not_heard_twice(broker_url: str, queue_name: str) -> None:
    from tui.engine.pool import Inbox
    from tui.engine.remote import RemoteWorkers

    inbox = Inbox()
    remote = RemoteWorkers(inbox, lambda name: name == "w1")
    remote.heard("w1", "here", 10, protocol.encode(protocol.Alive("w1", 1.0, 60)).encode())
    assert inbox.drain() == []
    line = protocol.encode(protocol.Alive("carol-pc", 1.0, 60)).encode()
    remote.heard("carol-pc", "pc", 11, line)
    remote.heard("carol-pc", "pc", 11, line)
    remote.heard("carol-pc", "pc", 12, line)  # a new process under the same name
    got = inbox.drain()
    heard = [item for item in got if isinstance(item, obs.RemoteWorkerHeard)]
    assert [(h.worker, h.pid) for h in heard] == [("carol-pc", 11), ("carol-pc", 12)]
    assert sum(isinstance(item, protocol.Alive) for item in got) == 3
    assert remote.names() == {"carol-pc"}
    # Their connections are ours (they have cards), not other consumers'.
    assert _is_ours("dispatch-lab carol-pc (pid 11)", set(), {"carol-pc"})
    assert not _is_ours("dispatch-lab dave-pc (pid 11)", set(), {"carol-pc"})


def test_a_remote_worker_folds_into_the_model_and_comes_back_as_the_same_card() -> None:
    model = Model(queue="q", prefix="p")
    model.apply_all(
        [
            obs.RemoteWorkerHeard("eve-pc", 10.0, "pc", 42),
            protocol.Alive("eve-pc", 10.5, 60),
            protocol.Received("eve-pc", 11.0, 1, "p-1", "a.", False),
            protocol.Started("eve-pc", 11.0, 1, "p-1", 1.0),
            protocol.Done("eve-pc", 12.0, 1, "p-1", True),
            protocol.Dropped("eve-pc", 12.5, 7),
        ]
    )
    eve = model.workers["eve-pc"]
    assert eve.remote and eve.host == "pc" and eve.pid == 42 and eve.status == "idle"
    assert (eve.received, eve.done, eve.dropped) == (1, 1, 7)
    assert eve.silent_for(20.0) is not None and eve.silent_for(13.0) is None
    model.apply(protocol.Stopped("eve-pc", 13.0, "interrupted"))
    assert not eve.alive
    model.apply_all([obs.RemoteWorkerHeard("eve-pc", 20.0, "pc", 43), protocol.Alive("eve-pc", 20.1, 60)])
    assert model.workers["eve-pc"] is eve and eve.alive and eve.pid == 43 and eve.restarts == 1


def test_a_watching_config_hears_reports_by_default() -> None:
    assert LabConfig(url="amqp://x").hear_reports


def test_a_reporting_worker_that_crashes_on_a_task_still_reports_the_failure(
    broker_url: str, queue_name: str, spawn_worker: WorkerFactory
) -> None:
    with heard_on_exchange(broker_url, queue_name) as heard:
        # Only reports (no --events): its events wait for the next batch, and the crash sends them first.
        worker = spawn_worker(queue_name, "erin", events=False, extra_args=["--report", "--on-fail", "crash"])
        wait_until(lambda: any(isinstance(e, protocol.Ready) for e in heard), 15, "erin's ready heard")
        with Publisher(broker_url, queue_name) as publisher:
            publisher.publish("fine")
            publisher.publish("Bad [red]task[/]!")
        assert worker.wait_exit(15) == 1
        wait_until(lambda: any(isinstance(e, protocol.Failed) for e in heard), 5, "the failure heard")
        [failed] = [e for e in heard if isinstance(e, protocol.Failed)]
        assert (failed.worker, failed.action) == ("erin", "crash")
        assert [e.body for e in heard if isinstance(e, protocol.Received)] == ["fine", "Bad [red]task[/]!"]
