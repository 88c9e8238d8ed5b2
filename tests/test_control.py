"""Tests of commands to remote workers: the control exchange, ``worker --accept-control``, and the dashboard's keys."""

from __future__ import annotations

import threading

import pika
import pika.exceptions
import pytest

from tests.conftest import WorkerFactory
from tests.helpers import WorkerProc, heard_on_exchange, wait_until
from tests.test_app import Lab, run_lab
from tests.test_hostile_text import toasts, wait_for_toast
from tui.engine import session_log
from tui.engine.backend import LabConfig, build_pipeline
from tui.model import observations as obs
from tui.model.state import Model
from tui.view.widgets.worker_card import WorkerCard
from workers import control, protocol
from workers.broker import routing_key
from workers.settings import AckMode, FailMode

ALICE, BOB = "alice-laptop", "bob-laptop"


def listening(worker: WorkerProc) -> bool:
    """The worker's control queue is bound (it says so on stderr)."""
    return control.LISTENING in worker.stderr


def controlled(spawn_worker: WorkerFactory, queue_name: str, name: str, prefetch: int = 1) -> WorkerProc:
    """A 0-dot worker started with ``--report --accept-control``, ready and with its control queue bound."""
    worker = spawn_worker(
        queue_name, name, prefetch=prefetch, seconds_per_dot=0.0, extra_args=["--report", "--accept-control"]
    )
    worker.ready()
    wait_until(lambda: listening(worker), 10, f"{name}'s control queue bound")
    return worker


def gone_from_broker(url: str, key: str) -> None:
    """Wait until the broker has no control queue bound for ``key`` (a dead worker's goes once the broker notices)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()

        def unroutable() -> bool:
            try:
                channel.basic_publish(control.EXCHANGE, key, b"probe", mandatory=True)
            except pika.exceptions.UnroutableError:
                return True
            return False

        wait_until(unroutable, 10, f"no control queue for {key}", interval=0.1)
    finally:
        connection.close()


def test_a_control_message_that_is_not_a_command_is_ignored_with_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    obeyed: list[protocol.Command] = []
    listener = control.ControlListener("amqp://unused", "q", "w", obeyed.append)
    for body in (b"not json", b'{"cmd": "format-disk"}', b"[]", b'{"cmd": "stop"}' + b" " * control.MAX_BODY):
        listener.heard(body)
    assert obeyed == [] and listener.ignored == 4
    assert capsys.readouterr().err.count("w: ignored a control message that is not a command") == 4
    listener.heard(protocol.encode_command(protocol.SetMode(1, "manual")).encode())
    assert obeyed == [protocol.SetMode(1, "manual")]


def test_accept_control_needs_report(spawn_worker: WorkerFactory, queue_name: str) -> None:
    worker = spawn_worker(queue_name, "carol", extra_args=["--accept-control"])
    assert worker.wait_exit() == 2
    assert "--accept-control needs --report" in worker.stderr and "Traceback" not in worker.stderr


def test_alive_says_the_mode_and_an_older_line_still_reads() -> None:
    line = protocol.encode(protocol.Alive("w", 1.0, 60, 10, "auto", "reject"))
    assert '"prefetch":10,"ack":"auto","on_fail":"reject"' in line
    assert protocol.decode(line) == protocol.Alive("w", 1.0, 60, 10, "auto", "reject")
    old = '{"v":1,"event":"alive","worker":"w","ts":1.0,"heartbeat":60}'
    assert protocol.decode(old) == protocol.Alive("w", 1.0, 60)
    assert protocol.encode(protocol.Alive("w", 1.0, 60)).rstrip() == old  # a worker that says nothing more


def test_a_dashboard_that_missed_ready_learns_the_mode_from_alive() -> None:
    model = Model(queue="q", prefix="p")
    model.apply_all([obs.RemoteWorkerHeard("eve", 10.0, "pc", 42, True), protocol.Alive("eve", 10.5, 60)])
    eve = model.workers["eve"]
    assert eve.control and eve.prefetch is None, "an older worker's alive: the mode stays unknown, not invented"
    model.apply(protocol.Alive("eve", 11.5, 60, 3, "auto", "crash"))
    assert (eve.prefetch, eve.ack, eve.on_fail) == (3, AckMode.AUTO, FailMode.CRASH)


def test_a_saved_session_keeps_which_remote_workers_took_commands() -> None:
    heard = obs.RemoteWorkerHeard("eve", 10.0, "pc", 42, True)
    assert session_log.decode(session_log.encode(heard)) == heard
    older = '{"obs":"RemoteWorkerHeard","worker":"eve","ts":10.0,"host":"pc","pid":42}'
    assert session_log.decode(older) == obs.RemoteWorkerHeard("eve", 10.0, "pc", 42, False)


def test_a_watching_view_has_no_way_to_send_commands() -> None:
    assert build_pipeline(LabConfig(url="amqp://x", watch_only=True, workers=0)).control is None
    assert build_pipeline(LabConfig(url="amqp://x", workers=0)).control is not None


def test_commands_reach_only_the_worker_that_accepts_them_and_a_late_dashboard_learns_both_modes(
    broker_url: str, queue_name: str, spawn_worker: WorkerFactory
) -> None:
    # Both start before the dashboard, in modes of their own: it never hears their ready.
    with heard_on_exchange(broker_url, queue_name) as heard:
        bob = spawn_worker(
            queue_name, BOB, prefetch=3, ack="auto", seconds_per_dot=0.0, extra_args=["--report", "--on-fail", "reject"]
        )
        alice = controlled(spawn_worker, queue_name, ALICE, prefetch=10)
        bob.ready()
        assert not listening(bob)
        # Published before the dashboard binds its feed (a report goes out within its interval, not at once).
        wait_until(
            lambda: {e.worker for e in heard if isinstance(e, protocol.Ready)} == {ALICE, BOB},
            10,
            "both readies on the events exchange",
        )

    async def scenario(lab: Lab) -> None:
        model = lab.model

        def known(name: str) -> bool:
            worker = model.workers.get(name)
            return worker is not None and worker.prefetch is not None and worker.on_fail is not None

        await lab.until(lambda: known(ALICE) and known(BOB), 10, "both workers' modes")
        a, b = model.workers[ALICE], model.workers[BOB]
        assert (a.prefetch, a.ack, a.on_fail, a.control) == (10, AckMode.MANUAL, FailMode.REQUEUE, True)
        assert (b.prefetch, b.ack, b.on_fail, b.control) == (3, AckMode.AUTO, FailMode.REJECT, False)
        assert not lab.events(protocol.Ready), "learnt from what they say each second, not from a ready"
        await lab.until(lambda: len(lab.app.query(WorkerCard)) == 2, 5, "two cards")
        await lab.until(
            lambda: str(lab.card(ALICE).border_subtitle).startswith("control · prefetch 10"), 5, "alice's control mark"
        )
        await lab.until(lambda: str(lab.card(BOB).border_subtitle).startswith("no control"), 5, "bob's no-control mark")
        assert "prefetch 3 · auto ack · on fail reject" in str(lab.card(BOB).border_subtitle)

        # F6: prefetch 1 for all workers (the dashboard's is 0): alice changes, bob is named as not reached.
        await lab.key("f6")
        toast = await wait_for_toast(lab.app, "Not reached")
        assert f"Not reached (started without --accept-control): {BOB}." in toast, toast
        assert "Sent to 1 remote worker(s) over the control exchange" in toast
        await lab.until(lambda: alice.of(protocol.Mode), 10, "alice's mode event")
        assert [(m.prefetch, m.ack) for m in alice.of(protocol.Mode)] == [(1, "manual")]
        await lab.until(lambda: model.workers[ALICE].prefetch == 1, 5, "alice's card in the new mode")

        # Ctrl+F: the failure mode for all workers (requeue -> reject).
        await lab.key("ctrl+f")
        await lab.until(lambda: alice.of(protocol.OnFail), 10, "alice's on_fail event")
        assert [e.on_fail for e in alice.of(protocol.OnFail)] == ["reject"]

        # F4 on bob's card: refused, with why and what to do.
        lab.app.selected = BOB
        await lab.key("f4")
        toast = await wait_for_toast(lab.app, "was started without --accept-control")
        assert toast.startswith(BOB) and "Ctrl+C there" in toast and "--report --accept-control" in toast, toast
        # F3 on alice's card: no dashboard kills a process on another machine; it offers stop.
        lab.app.selected = ALICE
        await lab.key("f3")
        toast = await wait_for_toast(lab.app, "cannot kill")
        assert "cannot kill a process on another machine. Press F4 to stop it instead" in toast, toast
        assert alice.proc.poll() is None

        # The broker has no control queue for bob: a command sent anyway comes back, said as such.
        unreached: list[tuple[list[str], str]] = []
        said = threading.Event()
        assert lab.backend.control is not None
        lab.backend.control.send(
            [BOB], protocol.Stop(), lambda names, why: (unreached.append((names, why)), said.set())
        )
        await lab.until(said.is_set, 10, "the broker's answer for bob")
        assert unreached == [([BOB], control.NOT_LISTENING)]

        # F4 on alice's card: she finishes and stops, as she reports.
        await lab.key("f4")
        await wait_for_toast(lab.app, f"Asked {ALICE} to stop, over the control exchange")
        await lab.until(lambda: not model.workers[ALICE].alive, 10, "alice stopped")
        assert [s.reason for s in alice.of(protocol.Stopped)] == ["stop"]
        assert alice.wait_exit() == 0

        # Bob runs on, unchanged: no command reached him.
        assert bob.proc.poll() is None and model.workers[BOB].alive
        assert not bob.of(protocol.Mode) and not bob.of(protocol.OnFail) and not bob.of(protocol.Stopped)
        assert (model.workers[BOB].prefetch, model.workers[BOB].on_fail) == (3, FailMode.REJECT)
        assert not [t for t in toasts(lab.app) if "did not reach" in t]

    run_lab(broker_url, queue_name, scenario, workers=0, notifications=True)
    assert bob.stop() == 0


def test_a_bad_control_message_never_stops_the_worker(
    broker_url: str, queue_name: str, spawn_worker: WorkerFactory
) -> None:
    worker = controlled(spawn_worker, queue_name, "dave")
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        key = routing_key(queue_name, "dave")
        for body in (b"\xff\xfe not a command", b'{"cmd": "mode", "prefetch": -1, "ack": "sometimes"}'):
            channel.basic_publish(control.EXCHANGE, key, body)
    finally:
        connection.close()
    worker.wait_event(protocol.Error)
    wait_until(lambda: "ignored a control message that is not a command" in worker.stderr, 10, "the ignored line")
    assert "--prefetch must be between 0" in worker.of(protocol.Error)[0].message
    assert worker.proc.poll() is None and not worker.of(protocol.Mode)
    assert worker.stop() == 0


def test_a_worker_gone_without_a_word_is_named_as_not_reached(
    broker_url: str, queue_name: str, spawn_worker: WorkerFactory
) -> None:
    carol = controlled(spawn_worker, queue_name, "carol-pc")

    async def scenario(lab: Lab) -> None:
        await lab.until(
            lambda: lab.model.workers.get("carol-pc") and lab.model.workers["carol-pc"].control, 10, "carol"
        )
        carol.kill()  # SIGKILL, as a laptop's battery dies: no stopped event; the broker drops her queue
        gone_from_broker(broker_url, routing_key(queue_name, "carol-pc"))
        assert lab.model.workers["carol-pc"].alive, "nothing told the dashboard yet"
        await lab.key("f7")  # the ack mode for all workers
        toast = await wait_for_toast(lab.app, "did not reach")
        assert f"The mode change did not reach carol-pc: {control.NOT_LISTENING}" in toast, toast

    run_lab(broker_url, queue_name, scenario, workers=0, notifications=True)
