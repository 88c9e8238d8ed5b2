"""Replays recorded sessions through the model: no broker, no Textual, exact figures."""

from __future__ import annotations

import math
import random

import pytest

from tests.recordings import (
    PREFIX,
    SETTLE,
    T0,
    Recorder,
    replay,
    session_auto_ack_loss,
    session_duplicate,
    session_fair,
    session_forgotten_ack,
    session_kill,
    session_mode_change,
    session_round_robin,
)
from tui.model import observations as obs
from tui.model.ledger import (
    AFTER_CRASH,
    AFTER_LOST_LINK,
    AFTER_STOP,
    DONE,
    FIRST,
    HELD,
    LOST,
    MODE_CHANGE,
    READY,
    REDELIVERED,
    UNACKED_DONE,
)
from tui.model.state import BUSY, DERIVED, EXITED, FROM_MANAGEMENT, IDLE, KILLED, RECONNECTING, STALE_AFTER, Model
from tui.view.widgets.queue_panel import _rows as queue_rows
from workers import protocol
from workers.settings import DispatchMode

MGMT = FROM_MANAGEMENT


def counts(model: Model) -> dict[str, tuple[int, int, int]]:
    """Per worker: (received, done, in hand)."""
    return {name: (w.received, w.done, w.in_hand) for name, w in model.workers.items()}


def lanes(model: Model, worker: str) -> list[tuple[str, str]]:
    return [(block.label, block.outcome) for block in model.workers[worker].lane]


def whys(model: Model, seq: int) -> list[str]:
    return [d.why for d in model.ledger.records[f"{PREFIX}-{seq}"].deliveries]


def lifeline(model: Model, seq: int) -> str:
    return model.ledger.records[f"{PREFIX}-{seq}"].lifeline()


# ----- (a) round-robin


def test_round_robin_deals_one_three_five_and_two_four() -> None:
    session = session_round_robin()
    model = replay(session.until("all delivered"))

    assert counts(model) == {"w1": (3, 0, 3), "w2": (2, 0, 2)}
    w1, w2 = model.workers["w1"], model.workers["w2"]
    assert [r.label() for r in w1.held.values()] == ["#1", "#3", "#5"]
    assert [r.label() for r in w2.held.values()] == ["#2", "#4"]
    assert (w1.status, w2.status) == (BUSY, BUSY)
    assert w1.current is not None and (w1.current.label, w1.current.seconds) == ("#1", 1.0)
    assert (w1.waiting, w2.waiting) == (2, 1)  # the prefetch window at work
    assert model.derived_unacked() == 5
    assert model.ledger.count(HELD) == 5
    assert (lifeline(model, 1), lifeline(model, 3)) == ("#1 -> w1 -> working", "#3 -> w1 -> waiting")
    assert model.balance(session.ts("all delivered"))[2] is None  # in motion


def test_round_robin_mid_run_and_end() -> None:
    session = session_round_robin()
    model = replay(session.until("two done"))
    assert counts(model) == {"w1": (3, 1, 2), "w2": (2, 1, 1)}
    assert model.ledger.done_messages == 2

    model = replay(session.until("w2 finished"))
    assert counts(model) == {"w1": (3, 2, 1), "w2": (2, 2, 0)}
    assert model.workers["w2"].status == IDLE

    model = replay(session.events)
    assert counts(model) == {"w1": (3, 3, 0), "w2": (2, 2, 0)}
    assert lanes(model, "w1") == [("#1", "done"), ("#3", "done"), ("#5", "done")]
    assert lanes(model, "w2") == [("#2", "done"), ("#4", "done")]
    ledger = model.ledger
    assert (ledger.published, ledger.confirmed, ledger.done_messages, ledger.done_runs) == (5, 5, 5, 5)
    assert (ledger.deliveries, ledger.redeliveries, ledger.duplicates, ledger.lost) == (5, 0, 0, 0)
    assert ledger.count(DONE) == 5
    assert lifeline(model, 3) == "#3 -> w1 -> done"
    assert whys(model, 1) == [FIRST]


def test_round_robin_balance_holds_when_quiet() -> None:
    session = session_round_robin()
    model = replay(session.events)
    now = session.end + 0.5
    assert not model.stale(now)
    assert model.unacked(now) == (0, MGMT)
    assert model.balance(now) == (5, 5, True)


def test_balance_goes_off_when_the_broker_disagrees() -> None:
    session = session_round_robin()
    model = replay(session.events)
    # The management API says two are still unacked though every worker reported done and acked.
    model.apply(obs.QueueSample(session.end + 1, ready=0, consumers=2, unacked=2))
    assert model.balance(session.end + 1.5) == (5, 7, False)


def test_balance_waits_while_figures_are_stale_or_disagree_on_ready() -> None:
    session = session_round_robin()
    model = replay(session.events)
    assert model.balance(session.end + STALE_AFTER + 0.1)[2] is None
    model.apply(obs.QueueSample(session.end + 1, ready=1, consumers=2, unacked=0))
    assert model.balance(session.end + 1.5) == (5, 6, None)  # we think none is ready: in motion


def test_done_rate_per_second() -> None:
    session = session_round_robin()
    model = replay(session.events)
    # Dones at T0+2, +3, +5, +7, +10 (publish at +1).
    assert model.rate(T0 + 11, seconds=5) == pytest.approx(2 / 5)
    assert model.rate_series(T0 + 11, seconds=10) == [0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]


# ----- (b) fair dispatch


def test_fair_dispatch_holds_one_each_and_shares_the_heavy_tasks() -> None:
    session = session_fair()
    model = Model(prefix=PREFIX)
    most = {"w1": 0, "w2": 0}
    for event in session.events:
        model.apply(event)
        for name, worker in model.workers.items():
            most[name] = max(most[name], worker.in_hand)
    assert most == {"w1": 1, "w2": 1}
    assert lanes(model, "w1") == [("#1", "done"), ("#4", "done")]
    assert lanes(model, "w2") == [("#2", "done"), ("#3", "done")]
    assert counts(model) == {"w1": (2, 2, 0), "w2": (2, 2, 0)}
    assert model.balance(session.end + 0.5) == (4, 4, True)


def test_fair_dispatch_ready_matches_the_ledger_while_waiting() -> None:
    session = session_fair()
    model = replay(session.until("window full"))
    assert model.queue.ready == 2
    assert model.ledger.count(READY) == 2
    assert model.unacked(session.ts("window full")) == (2, DERIVED)


# ----- (c) kill and redelivery


def test_kill_requeues_what_the_worker_held() -> None:
    session = session_kill()
    before = replay(session.until("before kill"))
    w1 = before.workers["w1"]
    assert (w1.in_hand, w1.waiting) == (2, 1)
    assert w1.current is not None and w1.current.label == "#1"

    model = replay(session.until("requeued"))
    w1 = model.workers["w1"]
    assert (w1.status, w1.exit_code, w1.in_hand, w1.unacked) == (KILLED, -9, 0, 0)
    assert w1.current is None
    assert lanes(model, "w1") == [("#1", "killed")]
    assert model.ledger.count(READY) == 2
    assert model.ledger.records[f"{PREFIX}-1"].state == READY
    assert model.ledger.records[f"{PREFIX}-3"].state == READY
    assert lifeline(model, 1) == "#1 -> w1 -> killed -> requeued"
    assert model.our_consumers() == 1
    assert model.derived_unacked() == 2  # w2's #2 and #4


def test_kill_redelivery_is_explained_as_a_crash() -> None:
    session = session_kill()
    model = replay(session.events)
    assert counts(model) == {"w1": (2, 0, 0), "w2": (4, 4, 0)}
    assert model.workers["w1"].status == KILLED
    assert model.workers["w2"].redelivered == 2
    for seq in (1, 3):
        assert whys(model, seq) == [FIRST, AFTER_CRASH]
        assert lifeline(model, seq) == f"#{seq} -> w1 -> killed -> requeued -> w2 (redelivered) -> done"
    assert lifeline(model, 2) == "#2 -> w2 -> done"
    ledger = model.ledger
    assert (ledger.done_messages, ledger.redeliveries, ledger.duplicates, ledger.lost) == (4, 2, 0, 0)
    assert lanes(model, "w2") == [("#2", "done"), ("#4", "done"), ("#1", "done"), ("#3", "done")]
    assert [b.redelivered for b in model.workers["w2"].lane] == [False, False, True, True]
    assert model.balance(session.end + 0.5) == (4, 4, True)


def test_kill_redelivery_reported_before_the_exit_tells_the_same_story() -> None:
    """The broker requeues faster than the pool reaps: w2's redeliveries may come before w1's exit."""
    session = session_kill(exit_after_redelivery=True)
    mid = replay(session.until("redelivered"))
    assert mid.ledger.records[f"{PREFIX}-1"].state == HELD
    assert mid.workers["w2"].in_hand == 4

    model = replay(session.events)
    for seq in (1, 3):
        assert whys(model, seq) == [FIRST, AFTER_CRASH]
        assert lifeline(model, seq) == f"#{seq} -> w1 -> killed -> requeued -> w2 (redelivered) -> done"
        assert model.ledger.records[f"{PREFIX}-{seq}"].state == DONE
    assert model.workers["w1"].status == KILLED
    assert model.ledger.count(READY) == 0
    assert model.balance(session.end + 0.5) == (4, 4, True)


def test_exit_after_redelivery_leaves_the_new_holder_alone() -> None:
    session = session_kill(exit_after_redelivery=True)
    model = replay(session.until("redelivered"))
    record = model.ledger.records[f"{PREFIX}-1"]
    assert record.state == HELD
    assert [d.outcome for d in record.deliveries] == ["killed", None]
    assert model.workers["w2"].in_hand == 4
    assert model.derived_unacked() == 4  # all of it in w2's hands; w1 is gone


# ----- (d) auto ack


def test_auto_ack_kill_loses_exactly_what_the_worker_held() -> None:
    session = session_auto_ack_loss()
    mid = replay(session.until("all delivered"))
    assert mid.derived_unacked() == 0  # the broker forgot them at delivery
    assert mid.workers["w1"].in_hand == 3

    model = replay(session.until("killed"))
    ledger = model.ledger
    assert ledger.lost == 3
    assert list(ledger.lost_ids) == [f"{PREFIX}-1", f"{PREFIX}-3", f"{PREFIX}-5"]
    assert ledger.count(LOST) == 3
    assert ledger.count(READY) == 0  # nothing comes back
    assert model.derived_unacked() == 0
    assert lifeline(model, 1) == "#1 -> w1 -> killed -> lost"
    assert lifeline(model, 3) == "#3 -> w1 -> killed -> lost"

    model = replay(session.events)
    assert (model.ledger.done_messages, model.ledger.lost, model.ledger.redeliveries) == (2, 3, 0)
    assert model.balance(session.end + 0.5) == (5, 5, True)


# ----- (e) live mode change


def test_mode_change_returns_are_not_crashes() -> None:
    session = session_mode_change()
    mid = replay(session.until("returned"))
    assert mid.mode == DispatchMode(1, "manual")
    assert (mid.workers["w1"].prefetch, mid.workers["w1"].returned, mid.workers["w1"].in_hand) == (1, 2, 1)
    assert (mid.workers["w2"].returned, mid.workers["w2"].in_hand) == (1, 1)
    assert mid.ledger.count(READY) == 3
    assert mid.workers["w1"].current is not None and mid.workers["w1"].current.label == "#1"
    assert lifeline(mid, 3) == "#3 -> w1 -> returned (mode-change) -> requeued"

    model = replay(session.events)
    for seq in (3, 4, 5):
        assert whys(model, seq) == [FIRST, MODE_CHANGE]
    assert lifeline(model, 3) == "#3 -> w1 -> returned (mode-change) -> requeued -> w1 (redelivered) -> done"
    all_whys = [d.why for r in model.ledger.records.values() for d in r.deliveries]
    assert AFTER_CRASH not in all_whys
    assert all(w.status == IDLE for w in model.workers.values())
    ledger = model.ledger
    assert (ledger.done_messages, ledger.redeliveries, ledger.duplicates, ledger.lost) == (5, 3, 0, 0)
    assert model.balance(session.end + 0.5) == (5, 5, True)


def test_stop_returns_are_explained_as_a_stop() -> None:
    r = Recorder()
    r.connected()
    r.spawn("w1", 10, prefetch=0)
    r.publish("a.", "b.")
    r.receive("w1", 1, 2)
    r.start("w1", 1)
    r.add(obs.StopRequested("w1", r.now, kill=False))
    r.give_back("w1", 2, "stop")
    r.after(1)
    r.done("w1", 1)
    r.add(protocol.Stopped("w1", r.now, "stop"), obs.WorkerExited("w1", r.now, 0))
    r.spawn("w2", 11, prefetch=0)
    r.receive("w2", 2, redelivered=True)
    model = replay(r.events)
    assert model.workers["w1"].status == EXITED
    assert whys(model, 2) == [FIRST, AFTER_STOP]
    assert lifeline(model, 2) == "#2 -> w1 -> returned (stop) -> requeued -> w2 (redelivered) -> waiting"


# ----- (f) forgotten ack


def test_forgotten_ack_grows_unacked_until_the_worker_goes() -> None:
    session = session_forgotten_ack()
    for seq in (1, 2, 3):
        model = replay(session.until(f"done {seq}"))
        w1 = model.workers["w1"]
        assert (w1.done, len(w1.unacked_done), w1.in_hand) == (seq, seq, 3 - seq)
        assert model.derived_unacked() == 3  # held or done, nothing acked
        assert model.ledger.count(UNACKED_DONE) == seq
        assert model.ledger.done_messages == 0
        assert model.ledger.done_runs == seq

    model = replay(session.until("all done, none acked"))
    now = session.ts("all done, none acked") + 0.1
    assert model.unacked(now) == (3, MGMT)
    assert model.balance(now) == (3, 3, True)  # all of it is accounted as unacked

    model = replay(session.until("stopped"))
    assert model.workers["w1"].status == EXITED
    assert model.derived_unacked() == 0
    assert model.ledger.count(READY) == 3
    assert model.ledger.count(UNACKED_DONE) == 0
    assert lifeline(model, 1) == "#1 -> w1 -> done, never acked -> requeued"

    model = replay(session.events)
    ledger = model.ledger
    assert (ledger.done_messages, ledger.done_runs, ledger.duplicates) == (3, 6, 3)
    assert list(ledger.duplicate_ids) == [f"{PREFIX}-1", f"{PREFIX}-2", f"{PREFIX}-3"]
    assert whys(model, 2) == [FIRST, AFTER_STOP]
    assert lifeline(model, 2) == "#2 -> w1 -> done, never acked -> requeued -> w2 (redelivered) -> done"
    assert model.balance(session.end + 0.5) == (3, 3, True)


def test_lost_connection_requeues_never_acked_work_as_a_lost_link() -> None:
    r = Recorder()
    r.connected()
    r.spawn("w1", 10, prefetch=0, ack="none")
    r.publish("a.", "b.")
    r.receive("w1", 1, 2)
    r.start("w1", 1)
    r.done("w1", 1, acked=False)
    r.add(protocol.Connection("w1", r.now, "lost", 0))
    r.give_back("w1", 2, "connection-lost")
    r.add(protocol.Connection("w1", r.now, "reconnecting", 1))
    model = replay(r.events)
    w1 = model.workers["w1"]
    assert (w1.status, w1.connection_attempt, w1.unacked, w1.in_hand) == (RECONNECTING, 1, 0, 0)
    assert model.ledger.count(READY) == 2

    r.add(protocol.Connection("w1", r.now, "restored", 1))
    r.receive("w1", 1, 2, redelivered=True)
    model = replay(r.events)
    assert model.workers["w1"].status == IDLE
    assert whys(model, 1) == [FIRST, AFTER_LOST_LINK]
    assert whys(model, 2) == [FIRST, AFTER_LOST_LINK]


# ----- (g) duplicates


def test_done_then_killed_before_the_ack_is_a_visible_duplicate() -> None:
    session = session_duplicate()
    mid = replay(session.until("killed"))
    assert mid.ledger.done_messages == 1
    assert mid.workers["w1"].status == KILLED
    # The broker has it ready again, we think it done: in motion, not a false alarm.
    assert mid.balance(session.ts("killed")) == (1, 2, None)

    model = replay(session.events)
    ledger = model.ledger
    assert (ledger.duplicates, ledger.done_messages, ledger.done_runs, ledger.redeliveries) == (1, 1, 2, 1)
    assert list(ledger.duplicate_ids) == [f"{PREFIX}-1"]
    assert ledger.records[f"{PREFIX}-1"].done_count == 2
    assert whys(model, 1) == [FIRST, REDELIVERED]
    assert lifeline(model, 1) == "#1 -> w1 -> done -> w2 (redelivered) -> done"
    assert model.balance(session.end + 0.5) == (1, 1, True)


# ----- (i) garbage and the unexpected


def test_garbage_lines_are_counted() -> None:
    model = Model()
    model.apply(obs.WorkerGarbage("w1", T0, "Traceback (most recent call last):"))
    model.apply(obs.WorkerGarbage("w1", T0, '{"v":1,"event":"done"'))
    model.apply(obs.WorkerGarbage("w2", T0, "\x00\x01"))
    assert (model.garbage, model.workers["w1"].garbage, model.workers["w2"].garbage) == (3, 2, 1)
    assert model.events == 3


def test_unknown_items_are_ignored_but_counted() -> None:
    model = replay(session_round_robin().events)
    before = (counts(model), model.ledger.done_messages, model.garbage)
    for item in (None, "done", 42, {"event": "done"}, object(), obs.ExternalConsumer("c", 1, True, 0)):
        model.apply(item)  # type: ignore[arg-type]
    assert (counts(model), model.ledger.done_messages, model.garbage) == before
    assert model.events == len(session_round_robin().events) + 6


def test_events_about_strangers_do_not_crash() -> None:
    model = Model(prefix=PREFIX)
    model.apply_all(
        [
            protocol.Done("ghost", T0, 7, "nobody-1", True),  # a tag never received
            protocol.Started("ghost", T0, 8, None, 2.0),
            protocol.Returned("ghost", T0, 9, None, "whatever"),
            protocol.Received("w9", T0, 1, None, "anonymous", False),
            protocol.Received("w9", T0, 2, None, "anonymous too", True),
            protocol.Received("w9", T0, 3, "someone-else-17", "foreign", False),
            protocol.Mode("w9", T0, -5, "bogus"),
            protocol.Connection("w9", T0, "sideways", -1),
            obs.WorkerExited("never-spawned", T0, 3),
            obs.Confirmed("unknown", T0),
            obs.PublishFailed("unknown", T0, "no such task"),
            obs.Purged(T0, -4),
            obs.BrokerStatus(T0, "on fire", 3, "?"),
        ]
    )
    ghost = model.workers["ghost"]
    assert (ghost.done, ghost.in_hand, ghost.returned) == (1, 0, 1)
    assert ghost.current is not None and ghost.current.label == "tag 8"
    w9 = model.workers["w9"]
    assert sorted(r.label() for r in w9.held.values()) == ["?1", "?2", "someone-else-17"]
    assert model.ledger.count(HELD) == 3
    assert model.workers["never-spawned"].status == EXITED
    assert model.stale(T0)


def test_non_finite_timestamps_do_not_crash() -> None:
    """decode refuses NaN and Infinity; events built in code with them still never crash the model."""
    line = '{"v":1,"event":"done","worker":"w1","ts":NaN,"tag":1,"msg_id":null,"acked":true}'
    assert protocol.decode(line) is None
    assert protocol.decode(line.replace("NaN", "Infinity")) is None
    model = Model()
    model.apply(protocol.Done("w1", math.nan, 1, None, True))
    model.apply(protocol.Done("w1", math.inf, 2, None, True))
    model.apply(protocol.Done("w1", -math.inf, 3, None, True))
    assert model.workers["w1"].done == 3
    assert model.rate(T0) == 0.0


def random_items(rng: random.Random, count: int = 120) -> list[obs.Observation]:
    """Shuffled, duplicated and contradictory events: tags reused across messages, strangers, dead workers."""
    workers = ["w1", "w2", "w3"]
    ids: list[str | None] = [*(f"{PREFIX}-{n}" for n in range(1, 9)), "other-1", None]
    items: list[obs.Observation] = []
    ts = T0
    for _ in range(count):
        ts += rng.choice((0.0, 0.01, 0.5, 3.0))
        w, tag, mid = rng.choice(workers), rng.randint(1, 6), rng.choice(ids)
        kind = rng.randrange(14)
        item: obs.Observation
        if kind == 0:
            item = obs.WorkerSpawned(w, ts, rng.randint(1, 99))
        elif kind == 1:
            item = protocol.Ready(w, ts, 1, "q", rng.choice((0, 1, 5)), rng.choice(("manual", "auto", "none")))
        elif kind in (2, 3):
            item = protocol.Received(w, ts, tag, mid, "x.", rng.random() < 0.3)
        elif kind == 4:
            item = protocol.Started(w, ts, tag, mid, rng.choice((0.0, 1.0)))
        elif kind in (5, 6):
            item = protocol.Done(w, ts, tag, mid, rng.random() < 0.8)
        elif kind == 7:
            item = protocol.Returned(w, ts, tag, mid, rng.choice(("mode-change", "stop", "connection-lost")))
        elif kind == 8:
            item = obs.WorkerExited(w, ts, rng.choice((0, 1, -9, -15)))
        elif kind == 9:
            item = protocol.Connection(w, ts, rng.choice(("lost", "reconnecting", "restored")), 1)
        elif kind == 10 and mid is not None:
            item = obs.Published(mid, ts, "x.")
        elif kind == 11 and mid is not None:
            item = obs.Confirmed(mid, ts)
        elif kind == 12:
            item = obs.QueueSample(ts, rng.randint(0, 5), 2, rng.choice((None, 0, 3)))
        else:
            item = obs.Purged(ts, rng.randint(0, 3))
        items.append(item)
    return items


def test_random_sequences_keep_the_books_consistent() -> None:
    """Shuffled, duplicated and contradictory events: never a crash, and every count adds up."""
    rng = random.Random(20261129)
    for _ in range(40):
        model = Model(prefix=PREFIX, ledger_cap=6)
        for item in random_items(rng):
            model.apply(item)
            ledger = model.ledger
            assert all(n >= 0 for n in ledger.state_counts.values()), ledger.state_counts
            assert sum(ledger.state_counts.values()) == len(ledger.records)
            assert ledger.done_messages <= ledger.done_runs
            assert ledger.duplicates <= ledger.done_runs
            assert all(w.in_hand >= 0 and w.unacked >= 0 for w in model.workers.values())
            model.balance(item.ts)
            model.rate_series(item.ts)
            for record in ledger.recent(5):
                record.lifeline()


def everything(model: Model) -> str:
    """The whole model as text: workers, lanes, logs, records, deliveries and every count."""
    return repr(({k: v for k, v in vars(model).items() if k != "ledger"}, vars(model.ledger)))


def test_apply_all_folds_as_apply_does_item_by_item() -> None:
    """apply_all has a loop of its own for floods: the model it leaves is the one apply leaves."""
    rng = random.Random(20261130)
    for _ in range(40):
        items = random_items(rng)
        one_by_one, batched = Model(prefix=PREFIX, ledger_cap=6), Model(prefix=PREFIX, ledger_cap=6)
        for item in items:
            one_by_one.apply(item)
        batched.apply_all(iter(items))
        assert everything(batched) == everything(one_by_one)
        assert one_by_one.events == len(items)


def test_started_and_done_act_on_the_delivery_held_delivery_names() -> None:
    """Both act on the delivery WorkerState.held_delivery names for their tag and message id."""
    rng = random.Random(20261131)
    for _ in range(60):
        model = Model(prefix=PREFIX, ledger_cap=6)
        for item in random_items(rng):
            w = model.workers.get(getattr(item, "worker", ""))
            if w is None or not isinstance(item, (protocol.Started, protocol.Done)):
                model.apply(item)
                continue
            found = w.held_delivery(item.tag, item.msg_id)
            key, named = (None, None) if found is None else found
            runs = named.done_count if named else 0
            model.apply(item)
            if isinstance(item, protocol.Started):
                assert w.current is not None
                assert w.current.label == (named.label() if named else f"tag {item.tag}")
            else:
                assert key not in w.held
                assert named is None or named.done_count == runs + 1


# ----- (j) staleness and where unacked comes from


def test_stale_until_connected_and_sampled() -> None:
    model = Model()
    assert model.stale(T0)
    model.apply(obs.QueueSample(T0, ready=0, consumers=0))
    assert model.stale(T0)  # broker state still "connecting"
    model.apply(obs.BrokerStatus(T0, "connected"))
    assert not model.stale(T0 + STALE_AFTER)
    assert model.stale(T0 + STALE_AFTER + 0.01)
    model.apply(obs.QueueSample(T0 + 5, ready=0, consumers=0))
    assert not model.stale(T0 + 6)
    model.apply(obs.BrokerStatus(T0 + 6, "lost", 1, "connection reset"))
    assert model.stale(T0 + 6)
    assert (model.broker_state, model.broker_since, model.broker_attempt) == ("lost", T0 + 6, 1)
    model.apply(obs.BrokerStatus(T0 + 7, "reconnecting", 2))
    model.apply(obs.BrokerStatus(T0 + 8, "connected"))
    model.apply(obs.QueueSample(T0 + 8, ready=0, consumers=0))
    assert not model.stale(T0 + 8.5)
    assert model.broker_restarts == 1


def test_broker_restart_explains_the_redeliveries() -> None:
    r = Recorder()
    r.connected()
    r.spawn("w1", 10, prefetch=0)
    r.publish("a.")
    r.receive("w1", 1)
    r.add(protocol.Connection("w1", r.now, "lost", 0))
    r.give_back("w1", 1, "connection-lost")
    r.broker("lost", 1)
    r.after(3)
    r.connected()
    r.add(protocol.Connection("w1", r.now, "restored", 2))
    r.receive("w1", 1, redelivered=True)
    model = replay(r.events)
    assert model.broker_restarts == 1
    assert whys(model, 1) == [FIRST, "after a broker restart"]


def test_unacked_prefers_a_fresh_management_figure() -> None:
    session = session_round_robin()
    model = replay(session.until("all delivered"))
    now = session.ts("all delivered")
    assert model.unacked(now) == (5, DERIVED)  # the API has not answered yet

    model.apply(obs.QueueSample(now, ready=0, consumers=2, unacked=4))
    assert model.unacked(now + 14.9) == (4, MGMT)
    assert model.unacked(now + 15.0) == (5, DERIVED)  # too old: back to the workers' own account
    model.apply(obs.QueueSample(now + 20, ready=0, consumers=2, unacked=None))  # the API stopped answering
    assert model.unacked(now + 20) == (5, DERIVED)
    assert model.queue.mgmt_unacked == 4


def test_tasks_published_from_another_terminal_balance_once_done() -> None:
    """new_task in another terminal (the tutorial's way): the dashboard learns of them at delivery."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 10, prefetch=0)
    r.publish("a.")
    r.receive("w1", 1)
    for tag, msg_id in ((50, "e9f0-1"), (51, "e9f0-2"), (52, None)):
        r.add(protocol.Received("w1", r.now, tag, msg_id, "theirs.", False))
    for tag in (1, 50, 51, 52):
        r.add(protocol.Done("w1", r.now, tag, None, True))
    r.after(SETTLE)
    r.sample(ready=0, consumers=1, unacked=0)
    model = replay(r.events)
    assert (model.ledger.foreign, model.from_elsewhere) == (3, 3)
    assert model.balance(r.now) == (4, 4, True), "1 of ours and 3 from elsewhere, all done"
    rows = {row[0]: row[1:] for row in queue_rows(model, r.now, False)}
    assert rows["published"] == ("1", "bold", "confirmed 1")
    assert rows["from others"] == ("3", "bold", "first seen at delivery")


def test_baseline_counts_what_was_queued_before_we_came() -> None:
    r = Recorder()
    r.connected()
    r.sample(ready=2, consumers=0, unacked=1)  # someone else's three tasks
    r.spawn("w1", 10, prefetch=0)
    r.publish("a.")
    r.receive("w1", 1)
    r.add(protocol.Received("w1", r.now, 50, "theirs-1", "old.", False))
    r.add(protocol.Received("w1", r.now, 51, "theirs-2", "old.", False))
    for tag in (1, 50, 51):
        r.add(protocol.Done("w1", r.now, tag, None, True))
    r.after(SETTLE)
    r.sample(ready=0, consumers=1, unacked=1)
    model = replay(r.events)
    assert model.baseline == 3
    assert model.ledger.done_messages == 3
    # Three of ours and theirs done plus the one a stranger still holds: 1 + 3 in, 3 + 1 accounted.
    assert model.balance(r.now) == (4, 4, True)
