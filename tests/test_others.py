"""Consumers the dashboard does not run: which of our tasks the model infers they took, and when.

Pure replays through the model (no broker): the tutorial's worker.py beside our
worker, with and without the management API's channel figures, and the orderings
of samples and events that must never turn a task in motion into one "taken".
"""

from __future__ import annotations

from pathlib import Path

from tests.recordings import T0, Recorder, replay
from tui.engine import session_log
from tui.model import observations as obs
from tui.model.ledger import DONE, FROM_OTHERS, HELD, READY, TAKEN
from tui.model.state import DERIVED_IGNORED, FROM_MANAGEMENT, Model
from tui.view.widgets.queue_panel import _rows as queue_rows
from workers import protocol

CHANNEL = "127.0.0.1:55064 -> 127.0.0.1:5672 (1)"


def theirs(delivered: int | None, acked: int | None, unacked: int = 0) -> obs.ExternalConsumer:
    """The tutorial's worker.py (prefetch 1, manual ack) as the management API lists it."""
    return obs.ExternalConsumer("127.0.0.1:55064 -> 127.0.0.1:5672", 1, True, unacked, CHANNEL, delivered, acked)


def states(model: Model) -> dict[int, str]:
    return {r.seq or 0: r.state for r in model.ledger.records.values() if r.seq is not None}


def tick(r: Recorder, seconds: float, ready: int, consumers: int, **mgmt: object) -> None:
    """``seconds`` of samples every 0.25 s, our worker saying alive every second, as the monitor and pool do."""
    end = r.now + seconds
    last_alive = r.now
    while r.now + 0.25 <= end + 1e-9:
        r.after(0.25)
        if r.now - last_alive >= 1.0:
            r.add(protocol.Alive("w1", r.now, 60))
            last_alive = r.now
        if mgmt:
            external = mgmt.get("external")
            assert isinstance(external, tuple)
            unacked = mgmt.get("unacked")
            assert isinstance(unacked, int)
            r.add(obs.QueueSample(r.now, ready, consumers, unacked, external))
        else:
            r.sample(ready=ready, consumers=consumers)


def beside_worker_py() -> Recorder:
    """Our w1 (prefetch 1) and worker.py share the queue; we publish three, worker.py takes #2 unseen by us."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=1)  # worker.py was there first
    r.spawn("w1", 4101, prefetch=1)
    tick(r, 1.0, ready=0, consumers=2)
    r.publish("First.", "Second.", "Third.")
    r.receive("w1", 1)
    r.start("w1", 1)
    return r


def test_a_task_worker_py_took_becomes_taken_once_the_shortfall_settles() -> None:
    r = beside_worker_py()
    # The broker: #1 at w1, #2 at worker.py, #3 waiting (each consumer's window is full).
    tick(r, 1.0, ready=1, consumers=2)
    model = replay(r.events)
    assert states(model) == {1: HELD, 2: READY, 3: READY}, "1 s after: still settling, nothing inferred"
    tick(r, 1.0, ready=1, consumers=2)
    model = replay(r.events)
    # The queue hands out its oldest first: #2 was taken, #3 waits.
    assert states(model) == {1: HELD, 2: TAKEN, 3: READY}
    assert model.missing_from_queue(r.now) == 0
    record = model.ledger.records["ab12-2"]
    assert record.lifeline() == "#2 -> taken by another consumer (inferred)"
    assert (model.ledger.taken, model.ledger.taken_ever) == (1, 1)

    # w1 finishes #1 and gets #3; worker.py acks #2 (nothing we can see).
    r.done("w1", 1)
    r.receive("w1", 3)
    r.start("w1", 3)
    tick(r, 1.0, ready=0, consumers=2)
    r.done("w1", 3)
    tick(r, 3.0, ready=0, consumers=2)
    model = replay(r.events)
    assert states(model) == {1: DONE, 2: TAKEN, 3: DONE}
    assert READY not in states(model).values()
    # Without the management API nothing counts what worker.py holds: the balance cannot close while it is there.
    assert model.uncounted_others(r.now) == 1
    assert model.balance(r.now)[2] is None
    rows = {row[0]: row[1:] for row in queue_rows(model, r.now, False)}
    assert rows["balance"] == ("…", "dim", "can't close: 1 other")
    assert ("", "", "dim", "no mgmt API to count it") in queue_rows(model, r.now, False)
    assert rows["taken"] == ("1", "bold", "by others, inferred")
    # worker.py is stopped (Ctrl+C): the balance closes, 3 in = 2 done + 1 taken.
    tick(r, 1.0, ready=0, consumers=1)
    model = replay(r.events)
    assert model.uncounted_others(r.now) == 0
    assert model.balance(r.now) == (3, 3, True)


def test_a_task_is_inferred_taken_after_worker_py_has_gone_too() -> None:
    """worker.py did #2 and was stopped before the shortfall settled: it was there when #2 left the queue."""
    r = beside_worker_py()
    tick(r, 0.5, ready=1, consumers=2)
    r.done("w1", 1)
    r.receive("w1", 3)
    r.done("w1", 3)
    tick(r, 4.0, ready=0, consumers=1)
    model = replay(r.events)
    assert states(model)[2] == TAKEN
    assert model.balance(r.now) == (3, 3, True)


def test_a_sample_from_before_the_publish_never_makes_a_task_taken() -> None:
    """The monitor's sample was taken before the broker enqueued our task and folded after its confirm."""
    r = Recorder()
    r.connected()
    r.spawn("w1", 4101, prefetch=1)
    tick(r, 1.0, ready=0, consumers=2)
    r.publish("Waiting.")
    r.sample(ready=0, consumers=2)  # answered before the enqueue
    tick(r, 0.25, ready=0, consumers=2)  # one more in flight
    tick(r, 5.0, ready=1, consumers=2)  # then the broker counts it: it waits (both consumers busy)
    model = replay(r.events)
    assert states(model) == {1: READY}
    assert model.ledger.taken_ever == 0


def test_a_delivery_reported_after_the_sample_never_makes_a_task_taken() -> None:
    """The broker counts the task out of the queue a moment before our worker's event says it has it."""
    r = Recorder()
    r.connected()
    r.spawn("w1", 4101, prefetch=1)
    tick(r, 1.0, ready=0, consumers=2)
    r.publish("Mine.")
    tick(r, 1.25, ready=0, consumers=2)  # gone from the queue, and w1's event is slow (a busy machine)
    r.receive("w1", 1)
    tick(r, 3.0, ready=0, consumers=2)
    model = replay(r.events)
    assert states(model) == {1: HELD}
    assert model.ledger.taken_ever == 0


def test_no_inference_while_stale_or_while_a_worker_of_ours_is_silent() -> None:
    r = Recorder()
    r.connected()
    r.spawn("w1", 4101, prefetch=1)
    tick(r, 1.0, ready=0, consumers=2)
    r.publish("Mine.")
    r.broker("reconnecting", 1)  # the monitor's link drops: its samples say nothing fresh
    tick(r, 3.0, ready=0, consumers=2)
    assert states(replay(r.events)) == {1: READY}

    # Linked, but w1 went silent (SIGSTOP) just before: it may hold the delivery without a word.
    r2 = Recorder()
    r2.connected()
    r2.spawn("w1", 4101, prefetch=1)
    tick(r2, 1.0, ready=0, consumers=2)
    r2.publish("Mine.")
    for _ in range(20):
        r2.after(0.25)
        r2.sample(ready=0, consumers=2)
    assert states(replay(r2.events)) == {1: READY}
    r2.add(protocol.Alive("w1", r2.now, 60))  # SIGCONT: it speaks, and has reported nothing
    tick(r2, 0.25, ready=0, consumers=2)
    assert states(replay(r2.events)) == {1: TAKEN}


def test_no_inference_when_no_other_consumer_was_attached() -> None:
    """Gone from the queue with no one else there: not taken by another consumer (that is another story)."""
    r = Recorder()
    r.connected()
    r.spawn("w1", 4101, prefetch=1)
    tick(r, 1.0, ready=0, consumers=1)
    r.publish("Mine.")
    tick(r, 4.0, ready=0, consumers=1)
    assert states(replay(r.events)) == {1: READY}


def test_with_the_management_api_its_delivery_count_bounds_the_inference() -> None:
    r = Recorder()
    r.connected()
    r.spawn("w1", 4101, prefetch=1)
    # worker.py had done 5 before we came: not ours to count.
    tick(r, 1.0, ready=0, consumers=2, unacked=0, external=(theirs(5, 5),))
    r.publish("First.", "Second.")
    r.receive("w1", 1)
    r.start("w1", 1)
    # The broker already has #2 at worker.py, but the API's stats (5 s behind) do not show it yet.
    tick(r, 3.0, ready=0, consumers=2, unacked=1, external=(theirs(5, 5),))
    model = replay(r.events)
    assert states(model)[2] == READY, "the API has not counted the delivery yet: wait for it"
    assert model.missing_from_queue(r.now) == 1
    assert ("", "", "dim", "1 of ours gone: checking") in queue_rows(model, r.now, False)
    tick(r, 0.5, ready=0, consumers=2, unacked=2, external=(theirs(6, 5, unacked=1),))
    model = replay(r.events)
    assert states(model)[2] == TAKEN
    assert (model.others.took, model.others.acked, model.others.unacked) == (1, 0, 1)
    rows = {row[0]: row[1:] for row in queue_rows(model, r.now, False)}
    assert rows["others took"] == ("1", "bold", "acked 0, mgmt ~5 s old")
    assert rows["unacked"][2] == FROM_MANAGEMENT

    r.done("w1", 1)
    tick(r, 2.0, ready=0, consumers=2, unacked=1, external=(theirs(6, 5, unacked=1),))
    tick(r, 9.0, ready=0, consumers=2, unacked=0, external=(theirs(6, 6),))
    model = replay(r.events)
    # The queue's unacked counted worker.py's #2 while it held it; taken counts it, once.
    assert model.balance(r.now) == (2, 2, True)
    assert model.uncounted_others(r.now) == 0, "the API counts what they take: the balance may close"
    assert (model.others.took, model.others.acked) == (1, 1)


def test_while_their_channel_figures_settle_the_balance_waits() -> None:
    r = Recorder()
    r.connected()
    r.spawn("w1", 4101, prefetch=1)
    tick(r, 1.0, ready=0, consumers=2, unacked=0, external=(theirs(0, 0),))
    r.publish("First.")
    tick(r, 10.0, ready=0, consumers=2, unacked=1, external=(theirs(1, 0, unacked=1),))
    model = replay(r.events)
    assert states(model)[1] == TAKEN
    assert model.balance(r.now) == (1, 1, True), "worker.py holds it: the queue's 1 unacked is theirs"
    # worker.py acks: its channel's figures move first, the queue's a poll later: 1 in, 2 out for a moment.
    tick(r, 0.5, ready=0, consumers=2, unacked=1, external=(theirs(1, 1),))
    assert replay(r.events).balance(r.now) == (1, 2, None)
    tick(r, 2.0, ready=0, consumers=2, unacked=0, external=(theirs(1, 1),))
    assert replay(r.events).balance(r.now) == (1, 1, None), "settling: the API's figures just moved"
    tick(r, 7.0, ready=0, consumers=2, unacked=0, external=(theirs(1, 1),))
    assert replay(r.events).balance(r.now) == (1, 1, True)


def test_a_new_channel_without_stats_yet_holds_the_inference_back() -> None:
    r = Recorder()
    r.connected()
    r.spawn("w1", 4101, prefetch=1)
    tick(r, 1.0, ready=0, consumers=1, unacked=0, external=())
    r.publish("First.")
    tick(r, 3.0, ready=0, consumers=2, unacked=1, external=(theirs(None, None, unacked=1),))
    assert states(replay(r.events))[1] == READY
    # Its first stats never come (a broker that collects none): after a while the declare's word is enough.
    tick(r, 6.0, ready=0, consumers=2, unacked=1, external=(theirs(None, None, unacked=1),))
    assert states(replay(r.events))[1] == TAKEN


def test_a_task_given_back_by_the_other_consumer_comes_to_ours() -> None:
    r = beside_worker_py()
    tick(r, 2.0, ready=1, consumers=2)
    r.done("w1", 1)
    r.receive("w1", 3)
    r.done("w1", 3)
    tick(r, 2.0, ready=0, consumers=2)
    assert states(replay(r.events))[2] == TAKEN
    # worker.py is killed holding #2: the broker redelivers it to w1.
    r.receive("w1", 2, redelivered=True)
    r.done("w1", 2)
    tick(r, 2.0, ready=0, consumers=1)
    model = replay(r.events)
    record = model.ledger.records["ab12-2"]
    assert record.state == DONE and record.deliveries[0].why == FROM_OTHERS
    assert (model.ledger.taken, model.ledger.taken_ever) == (0, 1)
    assert model.balance(r.now) == (3, 3, True)


def test_an_api_for_another_broker_is_ignored_and_says_why() -> None:
    model = Model()
    model.apply(obs.BrokerStatus(T0, "connected"))
    refusal = "ignoring the management API at http://127.0.0.1:15672: it serves cluster 'rabbit@vm' (node …)"
    model.apply(obs.ManagementChecked(T0, "http://127.0.0.1:15672", refusal))
    # A sample that raced the refusal still carries the other broker's figures: they are not used.
    model.apply(obs.QueueSample(T0 + 0.1, 0, 0, 3, (theirs(9, 9),)))
    assert model.unacked(T0 + 0.2) == (0, DERIVED_IGNORED)
    assert model.queue.external is None and not model.others.management
    rows = {row[0]: row[1:] for row in queue_rows(model, T0 + 0.2, False)}
    assert rows["unacked"] == ("0", "bold", "derived; mgmt API ignored")
    assert len(DERIVED_IGNORED) <= 25, "fits the panel's source column at 120 columns"
    # worker.py attaches: the API that could count what it takes is ignored, and the panel says so.
    for n in range(4):
        model.apply(obs.QueueSample(T0 + 0.2 + n * 0.25, 0, 1, None, None))
    rows = queue_rows(model, T0 + 1, False)
    assert ("balance", "…", "dim", "can't close: 1 other") in rows
    assert ("", "", "dim", "API ignored; can't count") in rows
    model.apply(obs.ManagementChecked(T0 + 1, "http://127.0.0.1:15672"))
    model.apply(obs.QueueSample(T0 + 1.1, 0, 0, 3, ()))
    assert model.unacked(T0 + 1.2) == (3, FROM_MANAGEMENT)


def test_what_others_held_when_we_came_is_not_in_the_baseline() -> None:
    model = Model()
    model.apply(obs.BrokerStatus(T0, "connected"))
    # Two waiting, three unacked: one of them at worker.py (its channel listed twice: two consumers on it).
    model.apply(obs.QueueSample(T0, 2, 2, 3, (theirs(4, 3, unacked=1), theirs(4, 3, unacked=1))))
    assert model.baseline == 4
    assert model.others.unacked == 1


def test_a_saved_session_replays_to_the_same_inference(tmp_path: Path) -> None:
    """``dispatch-lab replay`` folds the log it saved: the same tasks come out taken, at the same points."""
    r = beside_worker_py()
    r.add(obs.ManagementChecked(r.now, "http://127.0.0.1:15672"))
    tick(r, 0.25, ready=1, consumers=2, unacked=1, external=(theirs(0, 0),))
    tick(r, 2.0, ready=1, consumers=2, unacked=2, external=(theirs(1, 0, unacked=1),))
    path = tmp_path / "events.jsonl"
    path.write_text("".join(session_log.encode(item) for item in r.events), encoding="utf-8")
    again = replay(list(session_log.read(path)))
    assert states(again) == {1: HELD, 2: TAKEN, 3: READY}
    assert states(again) == states(replay(r.events))
    assert again.others == replay(r.events).others
