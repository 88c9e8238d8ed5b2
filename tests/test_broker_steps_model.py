"""When the broker steps in, replayed through the model: an ack timeout, a deleted queue, a closed connection.

Pure: no broker, no Textual. The events are what the workers write (see
tests/test_broker_steps.py for the same on a real broker).
"""

from __future__ import annotations

from pathlib import Path

from tests.recordings import PREFIX, SETTLE, T0, Recorder, msg_id, replay
from tui.engine.session_log import SessionLog, read
from tui.model import observations as obs
from tui.model.ledger import AFTER_ACK_TIMEOUT, DELETED, DONE, FIRST, HELD, READY
from tui.model.state import BUSY, CANCELLED, CHANNEL_CLOSED, IDLE, QUEUE_DELETED, Model
from tui.view.widgets.queue_panel import _broker_steps as broker_steps
from tui.view.widgets.queue_panel import _rows as queue_rows
from workers import protocol

TIMED_OUT = (
    "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: 2000 ms. "
    "This timeout value can be configured, see consumers doc guide to learn more"
)


def row(model: Model, label: str, now: float) -> tuple[str, str, str, str] | None:
    return next((r for r in queue_rows(model, now, model.stale(now)) if r[0] == label), None)


def ack_timeout_session(*, redelivered_to: str = "w2") -> Recorder:
    """w1 works #1 (5 s) past a 2 s ack timeout; the broker takes it back and hands it to ``redelivered_to``.

    w1 finishes #1 anyway (ack_lost), then consumes again on a new channel, as the worker does.
    """
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0, unacked=0)
    r.spawn("w1", 101, prefetch=1)
    r.spawn("w2", 102, prefetch=1)
    r.publish("slow.....")
    r.receive("w1", 1)
    r.start("w1", 1)
    r.after(2.5)
    r.mark("before the take-back")
    r.add(
        protocol.ChannelClosed("w1", r.now, 406, TIMED_OUT),
        protocol.Returned("w1", r.now, 1, msg_id(1), "ack-timeout"),
    )
    if redelivered_to == "w1":
        # A worker that consumes again at once gets it back on its new channel: tags restart at 1.
        r.add(protocol.Ready("w1", r.now, 101, "task_queue", 1, "manual"))
        r.add(protocol.Received("w1", r.now, 1, msg_id(1), "slow.....", True))
    else:
        r.receive("w2", 1, redelivered=True)
        r.start("w2", 1)
    r.after(0.5)
    r.sample(ready=0, consumers=1, unacked=1)
    r.mark("taken back")
    r.after(2.0)
    r.add(protocol.AckLost("w1", r.now, 1, msg_id(1), "ack-timeout"))
    r.mark("w1 finished")
    if redelivered_to == "w1":
        return r
    r.add(protocol.Ready("w1", r.now, 101, "task_queue", 1, "manual"))
    r.after(2.5)
    r.done("w2", 1)
    r.after(SETTLE)
    r.sample(ready=0, consumers=2, unacked=0)
    r.mark("quiet")
    return r


def test_ack_timeout_takes_the_task_back_from_the_card_and_the_unacked_figure() -> None:
    session = ack_timeout_session().recording()
    before = replay(session.until("before the take-back"))
    assert before.workers["w1"].status == BUSY

    model = replay(session.until("taken back"))
    now = session.ts("taken back")
    w1, w2 = model.workers["w1"], model.workers["w2"]
    assert w1.status == CHANNEL_CLOSED and w1.status != BUSY
    assert w1.current is None and w1.finishing is not None and w1.finishing.label == "#1"
    assert (w1.in_hand, w1.unacked, w2.unacked) == (0, 0, 1)
    assert model.derived_unacked() == 1 == model.queue.mgmt_unacked, "the screen's unacked is the broker's"
    assert model.our_consumers() == 1, "w1 has no consumer until it consumes again"
    assert w1.closed_by_broker == TIMED_OUT and any(TIMED_OUT in line for line in w1.log)
    record = model.ledger.records[msg_id(1)]
    assert [d.why for d in record.deliveries] == [FIRST, AFTER_ACK_TIMEOUT]
    assert record.lifeline() == "#1 -> w1 -> taken back (ack timeout) -> requeued -> w2 (redelivered) -> working"
    assert model.broker_closed == (now - 0.5, "w1's channel", TIMED_OUT)


def test_a_late_finish_after_an_ack_timeout_is_worked_ack_lost_not_done() -> None:
    session = ack_timeout_session().recording()
    model = replay(session.until("w1 finished"))
    ledger = model.ledger
    assert (ledger.done_messages, ledger.done_runs, ledger.duplicates, ledger.ack_lost) == (0, 0, 0, 1)
    w1 = model.workers["w1"]
    assert (w1.done, w1.ack_lost, w1.finishing) == (0, 1, None)
    assert w1.lane[-1].outcome == "ack lost"

    model = replay(session.events)
    ledger = model.ledger
    now = session.end + 0.1
    assert (ledger.done_messages, ledger.done_runs, ledger.duplicates, ledger.ack_lost) == (1, 1, 0, 1)
    assert model.workers["w1"].status == IDLE, "consuming again on a new channel"
    assert ledger.records[msg_id(1)].lifeline() == (
        "#1 -> w1 -> worked, ack lost (ack timeout) -> requeued -> w2 (redelivered) -> done"
    )
    assert row(model, "done", now) == ("done", "1", "bold", "runs 1, duplicates 0")
    assert row(model, "ack lost", now) == ("ack lost", "1", "bold red", "worked; the broker took it back")
    assert model.balance(now) == (1, 1, True)


def test_the_late_finish_lands_on_the_delivery_taken_back_not_on_its_redelivery_with_the_same_tag() -> None:
    """Back to the same worker on a new channel: the same tag, the same message id, two deliveries."""
    session = ack_timeout_session(redelivered_to="w1").recording()
    model = replay(session.events)
    record = model.ledger.records[msg_id(1)]
    w1 = model.workers["w1"]
    assert [d.outcome for d in record.deliveries] == ["worked, ack lost (ack timeout)", None]
    assert record.state == HELD and w1.in_hand == 1 and w1.unacked == 1, "the redelivery is still held"
    assert model.ledger.done_messages == 0


def test_a_done_reported_before_the_channel_closed_whose_ack_never_left_is_undone() -> None:
    """The work thread wrote done; the channel closed before the ack went out: the broker has it again."""
    r = Recorder()
    r.connected()
    r.spawn("w1", 101, prefetch=1)
    r.publish("x.")
    r.receive("w1", 1)
    r.start("w1", 1)
    r.after(1)
    r.done("w1", 1)
    r.add(protocol.ChannelClosed("w1", r.now, 406, TIMED_OUT))
    r.add(protocol.AckLost("w1", r.now, 1, msg_id(1), "ack-timeout"))
    model = replay(r.events)
    ledger = model.ledger
    record = ledger.records[msg_id(1)]
    assert (ledger.done_messages, ledger.done_runs, ledger.ack_lost, record.state) == (0, 0, 1, READY)
    assert record.next_why == AFTER_ACK_TIMEOUT
    assert record.lifeline() == "#1 -> w1 -> worked, ack lost (ack timeout) -> requeued"


def test_an_ack_timeout_requeues_done_but_never_acked_work() -> None:
    """Ack none: finished tasks stay unacked until the broker's timeout takes them back."""
    r = Recorder()
    r.connected()
    r.spawn("w1", 101, prefetch=0, ack="none")
    r.publish("a", "b")
    r.receive("w1", 1, 2)
    for seq in (1, 2):
        r.start("w1", seq)
        r.done("w1", seq, acked=False)
    assert replay(r.events).derived_unacked() == 2
    r.after(2.5)
    r.add(protocol.ChannelClosed("w1", r.now, 406, TIMED_OUT))
    model = replay(r.events)
    assert model.derived_unacked() == 0
    assert model.ledger.count(READY) == 2
    assert model.ledger.records[msg_id(1)].next_why == AFTER_ACK_TIMEOUT


def queue_deleted_session() -> Recorder:
    """w1 (prefetch 2) works #1 with #2 waiting and #3 ready in the queue when the queue is deleted."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0, unacked=0)
    r.spawn("w1", 101, prefetch=2)
    r.publish("one..", "two", "three")
    r.receive("w1", 1, 2)
    r.start("w1", 1)
    r.after(0.5)
    r.sample(ready=1, consumers=1, unacked=2)
    r.after(0.5)
    r.add(protocol.Cancelled("w1", r.now, "queue-deleted"))
    r.mark("cancelled")
    r.add(protocol.Ready("w1", r.now, 101, "task_queue", 2, "manual"))
    r.after(0.5)
    r.sample(ready=0, consumers=1, unacked=0)
    r.mark("consuming again")
    r.after(1)
    r.done("w1", 1)
    r.start("w1", 2)
    r.done("w1", 2)
    r.publish("four")  # into the queue declared again
    r.receive("w1", 4)
    r.start("w1", 4)
    r.done("w1", 4)
    r.after(SETTLE)
    r.sample(ready=0, consumers=1, unacked=0)
    r.mark("quiet")
    return r


def test_a_deleted_queue_is_told_and_what_it_held_is_accounted() -> None:
    session = queue_deleted_session().recording()
    model = replay(session.until("cancelled"))
    w1 = model.workers["w1"]
    now = session.ts("cancelled")
    assert w1.status == CANCELLED
    assert f" [!] {QUEUE_DELETED}" in w1.log
    assert model.ledger.records[msg_id(3)].state == DELETED, "it was waiting in the deleted queue"
    assert (w1.in_hand, w1.unacked, model.derived_unacked()) == (2, 0, 0), "held, but in no queue's unacked"
    assert broker_steps(model, now) == (QUEUE_DELETED, "not consuming yet: w1")
    assert model.our_consumers() == 0

    model = replay(session.until("consuming again"))
    now = session.ts("consuming again")
    assert model.workers["w1"].status == BUSY  # consuming again, still on #1
    assert model.workers["w1"].log[-1] == " [*] queue declared again; consuming"
    assert broker_steps(model, now) == (QUEUE_DELETED, "declared again, consuming: w1")
    assert model.derived_unacked() == 0 == model.queue.mgmt_unacked

    model = replay(session.events)
    now = session.end + 0.1
    ledger = model.ledger
    assert (ledger.done_messages, ledger.deleted, ledger.count(READY)) == (3, 1, 0)
    assert [ledger.records[msg_id(n)].state for n in (1, 2, 3, 4)] == [DONE, DONE, DELETED, DONE]
    assert row(model, "deleted", now) == ("deleted", "1", "bold", "went with the deleted queue")
    assert model.balance(now) == (4, 4, True)


def test_every_worker_the_deletion_cancelled_is_told_in_the_panel() -> None:
    """All consumers of a deleted queue are cancelled at once: the panel names each one consuming again."""
    r = Recorder()
    r.connected()
    for name, pid in (("w1", 101), ("w2", 102), ("w3", 103)):
        r.spawn(name, pid, prefetch=1)
    r.after(1)
    r.add(protocol.Cancelled("w1", r.now, "queue-deleted"), protocol.Ready("w1", r.now, 101, "task_queue", 1, "manual"))
    r.add(protocol.Cancelled("w2", r.now, "unknown"), protocol.Ready("w2", r.now, 102, "task_queue", 1, "manual"))
    r.add(protocol.Cancelled("w3", r.now + 0.01, "queue-deleted"))
    model = replay(r.events)
    assert broker_steps(model, r.now) == (QUEUE_DELETED, "declared again, consuming: w1 w2", "not consuming yet: w3")
    r.after(30)
    r.add(protocol.Cancelled("w1", r.now, "unknown"))
    model = replay(r.events)
    assert broker_steps(model, r.now) == ("consumer cancelled by the broker", "not consuming yet: w1"), "a new step"


def test_a_task_given_back_after_its_queue_was_deleted_is_gone_with_it() -> None:
    """Requeued into a queue that no longer exists: deleted, never ready again."""
    r = queue_deleted_session()
    events = r.events[: r.marks["consuming again"]]
    events.append(protocol.Returned("w1", r.now, 2, msg_id(2), "stop"))
    events.append(obs.WorkerExited("w1", r.now + 1, -9))
    model = replay(events)
    ledger = model.ledger
    assert [ledger.records[msg_id(n)].state for n in (1, 2, 3)] == [DELETED, DELETED, DELETED]
    assert (ledger.deleted, ledger.count(READY)) == (3, 0)


def test_an_operators_close_reason_is_shown_for_a_worker_and_for_the_dashboard() -> None:
    r = Recorder()
    r.connected()
    r.spawn("w1", 101, prefetch=1)
    reason = "CONNECTION_FORCED - class over [red]now[/]"
    r.add(protocol.Connection("w1", r.now, "lost", 0, reason))
    model = replay(r.events)
    assert model.workers["w1"].closed_by_broker == reason and f" [!] {reason}" in model.workers["w1"].log
    assert broker_steps(model, r.now) == (f"the broker closed w1's connection: {reason}",)
    r.after(1)
    r.add(obs.BrokerStatus(r.now, "lost", 0, f"the broker closed the connection: {reason}"))
    model = replay(r.events)
    assert broker_steps(model, r.now) == (f"the broker closed the dashboard's connection: {reason}",)
    stale = row(model, "", r.now)
    assert stale is not None and stale[3] == f"broker lost: the broker closed the connection: {reason}"
    assert broker_steps(model, r.now + 121) == (), "told for two minutes"


def test_a_connection_event_without_a_reason_still_folds_as_before() -> None:
    r = Recorder()
    r.spawn("w1", 101, prefetch=1)
    r.add(protocol.Connection("w1", r.now, "lost", 0))
    model = replay(r.events)
    assert model.workers["w1"].closed_by_broker == "" and model.broker_closed is None
    assert model.workers["w1"].log[-1] == " [!] connection lost"


def test_the_broker_steps_replay_from_a_session_log(tmp_path: Path) -> None:
    """New event kinds go through the session log and fold into the same model in replay."""
    session = ack_timeout_session().recording()
    deleted = queue_deleted_session().recording()
    path = tmp_path / "events.jsonl"
    log = SessionLog(path)
    log.start()
    log.add(list(session.events))
    log.close()
    again = list(read(path))
    assert again == session.events
    live, replayed = replay(session.events), replay(again)
    assert (replayed.ledger.ack_lost, replayed.ledger.done_messages) == (live.ledger.ack_lost, 1)
    path2 = tmp_path / "deleted.jsonl"
    log = SessionLog(path2)
    log.start()
    log.add(list(deleted.events))
    log.close()
    assert list(read(path2)) == deleted.events
    assert replay(list(read(path2))).ledger.deleted == 1
    assert T0 and PREFIX  # the recordings' own clock and prefix
