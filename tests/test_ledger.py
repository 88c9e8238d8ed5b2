"""Tests the message ledger on its own: labels, publish and confirm, purge, and eviction at the cap."""

from __future__ import annotations

from tests.recordings import PREFIX, SETTLE, T0, Recorder, replay
from tui.model.ledger import (
    AFTER_CRASH,
    DONE,
    FAILED,
    FIRST,
    HELD,
    PUBLISHING,
    PURGED,
    READY,
    REDELIVERED,
    Ledger,
)
from workers.settings import AckMode


def mid(n: int) -> str:
    return f"{PREFIX}-{n}"


def finish(ledger: Ledger, n: int, worker: str = "w1") -> None:
    """Publish, confirm, deliver and finish task ``n``."""
    ledger.published_task(mid(n), "task.", T0 + n)
    ledger.confirmed_task(mid(n))
    record = ledger.received(mid(n), "task.", worker, T0 + n, False, AckMode.MANUAL)
    ledger.done(record, T0 + n + 0.5, acked=True)


def hold(ledger: Ledger, n: int, worker: str = "w2") -> None:
    ledger.published_task(mid(n), "task.", T0 + n)
    ledger.confirmed_task(mid(n))
    ledger.received(mid(n), "task.", worker, T0 + n, False, AckMode.MANUAL)


# ----- labels and lookups


def test_labels_number_our_tasks_and_name_everyone_elses() -> None:
    ledger = Ledger(prefix=PREFIX)
    # "²" is a digit to str.isdigit but no number to int(): someone else's id, not a crash.
    for msg_id in (mid(7), f"{PREFIX}-x", "zz-3", f"{PREFIX}7", f"{PREFIX}-²", f"{PREFIX}-{PREFIX}-3"):
        ledger.published_task(msg_id, "b", T0)
    labels = ["#7", f"{PREFIX}-x", "zz-3", f"{PREFIX}7", f"{PREFIX}-²", f"{PREFIX}-{PREFIX}-3"]
    assert [r.label() for r in ledger.records.values()] == labels
    assert Ledger().records == {}
    unprefixed = Ledger()
    unprefixed.published_task(mid(1), "b", T0)
    assert unprefixed.records[mid(1)].label() == mid(1)


def test_deliveries_without_an_id_get_their_own_records() -> None:
    ledger = Ledger(prefix=PREFIX)
    first = ledger.received(None, "a", "w1", T0, False, AckMode.MANUAL)
    second = ledger.received(None, "b", "w1", T0, False, AckMode.MANUAL)
    assert (first.msg_id, second.msg_id) == ("?1", "?2")
    assert (first.published, first.state) == (None, HELD)
    assert ledger.count(HELD) == 2
    assert ledger.published == 0


def test_recent_is_newest_first() -> None:
    ledger = Ledger(prefix=PREFIX)
    for n in range(1, 6):
        ledger.published_task(mid(n), "b", T0)
    assert [r.label() for r in ledger.recent(3)] == ["#5", "#4", "#3"]
    assert len(ledger.recent()) == 5


# ----- publisher side


def test_publish_confirm_and_failure() -> None:
    ledger = Ledger(prefix=PREFIX)
    ledger.published_task(mid(1), "a", T0)
    ledger.published_task(mid(1), "a again", T0)  # the same id twice is one task
    ledger.published_task(mid(2), "b", T0)
    assert (ledger.published, ledger.count(PUBLISHING)) == (2, 2)
    ledger.confirmed_task(mid(1))
    ledger.confirmed_task(mid(1))
    ledger.confirmed_task("unknown")
    ledger.publish_failed(mid(2))
    ledger.publish_failed(mid(1))  # already confirmed: not a failure
    assert (ledger.confirmed, ledger.failed) == (1, 1)
    assert (ledger.records[mid(1)].state, ledger.records[mid(2)].state) == (READY, FAILED)
    assert ledger.records[mid(1)].lifeline() == "#1 -> ready"
    assert ledger.records[mid(2)].lifeline() == "#2 -> publish failed"


def test_a_delivery_that_beats_the_confirm_counts_as_confirmed_once() -> None:
    ledger = Ledger(prefix=PREFIX)
    ledger.published_task(mid(1), "a", T0)
    record = ledger.received(mid(1), "a", "w1", T0, False, AckMode.MANUAL)
    assert (record.state, record.confirmed, ledger.confirmed) == (HELD, True, 1)
    ledger.confirmed_task(mid(1))
    assert ledger.confirmed == 1
    assert ledger.count(PUBLISHING) == 0


# ----- why a delivery was made


def test_why_follows_the_story() -> None:
    ledger = Ledger(prefix=PREFIX)
    hold(ledger, 1, "w1")
    record = ledger.records[mid(1)]
    ledger.worker_gone(record, T0 + 2, killed=True)
    ledger.received(mid(1), "task.", "w2", T0 + 3, True, AckMode.MANUAL)
    ledger.returned(record, T0 + 4, "mode-change")
    ledger.received(mid(1), "task.", "w2", T0 + 5, True, AckMode.MANUAL)
    ledger.returned(record, T0 + 6, "something new")
    ledger.received(mid(1), "task.", "w3", T0 + 7, True, AckMode.MANUAL)
    assert [d.why for d in record.deliveries] == [FIRST, AFTER_CRASH, "returned by a mode change", REDELIVERED]
    assert record.lifeline() == (
        "#1 -> w1 -> killed -> requeued -> w2 (redelivered) -> returned (mode-change) -> requeued"
        " -> w2 (redelivered) -> returned (something new) -> requeued -> w3 (redelivered) -> waiting"
    )
    assert (ledger.deliveries, ledger.redeliveries) == (4, 3)


def test_a_redelivery_flag_on_a_first_sight_is_called_redelivered() -> None:
    ledger = Ledger(prefix=PREFIX)
    record = ledger.received(mid(1), "a", "w1", T0, True, AckMode.MANUAL)  # queued before we came, then requeued
    assert record.deliveries[0].why == REDELIVERED


def test_a_graceful_exit_under_auto_ack_loses_what_was_held() -> None:
    ledger = Ledger(prefix=PREFIX)
    ledger.published_task(mid(1), "a", T0)
    ledger.confirmed_task(mid(1))
    record = ledger.received(mid(1), "a", "w1", T0, False, AckMode.AUTO)
    ledger.worker_gone(record, T0 + 1, killed=False)
    assert (ledger.lost, list(ledger.lost_ids), record.state) == (1, [mid(1)], "lost")
    assert record.lifeline() == "#1 -> w1 -> exited -> lost"


# ----- purge


def test_purge_marks_the_oldest_ready_tasks_and_takes_back_a_wrong_guess() -> None:
    ledger = Ledger(prefix=PREFIX)
    for n in range(1, 6):
        ledger.published_task(mid(n), "b", T0)
        ledger.confirmed_task(mid(n))
    ledger.received(mid(1), "b", "w1", T0, False, AckMode.MANUAL)
    ledger.purge(3)
    assert [r.label() for r in ledger.records.values() if r.state == PURGED] == ["#2", "#3", "#4"]
    assert (ledger.purged, ledger.count(READY), ledger.count(PURGED)) == (3, 1, 3)
    # The broker purged #5 and delivered #4 after all: the delivery proves #4 was not purged.
    ledger.received(mid(4), "b", "w2", T0 + 1, False, AckMode.MANUAL)
    assert (ledger.purged, ledger.count(PURGED)) == (2, 2)
    ledger.purge(10)  # more than we know of: only what we saw ready
    assert ledger.purged == 3


def test_a_requeued_task_that_is_purged_says_so() -> None:
    ledger = Ledger(prefix=PREFIX)
    hold(ledger, 1, "w1")
    ledger.worker_gone(ledger.records[mid(1)], T0 + 2, killed=True)
    assert ledger.records[mid(1)].lifeline() == "#1 -> w1 -> killed -> requeued"
    ledger.purge(1)
    assert ledger.records[mid(1)].lifeline() == "#1 -> w1 -> killed -> requeued -> purged"


# ----- eviction at the cap


def test_eviction_keeps_the_cap_and_every_total() -> None:
    ledger = Ledger(cap=100, prefix=PREFIX)
    for n in range(1, 1001):
        finish(ledger, n)
        assert len(ledger.records) <= 100
    assert len(ledger.records) == 100
    assert ledger.evicted == 900
    assert list(ledger.records) == [mid(n) for n in range(901, 1001)]  # the newest stay
    assert (ledger.published, ledger.confirmed, ledger.deliveries) == (1000, 1000, 1000)
    assert (ledger.done_messages, ledger.done_runs, ledger.duplicates, ledger.lost) == (1000, 1000, 0, 0)
    assert ledger.count(DONE) == 100  # state counts describe the records kept
    assert sum(ledger.state_counts.values()) == len(ledger.records)


def test_eviction_never_drops_a_task_in_flight() -> None:
    ledger = Ledger(cap=100, prefix=PREFIX)
    for n in range(1, 151):
        hold(ledger, n)
    for n in range(151, 1151):
        finish(ledger, n)
    assert len(ledger.records) == 150  # over the cap: only finished records may go
    assert all(mid(n) in ledger.records for n in range(1, 151))
    assert ledger.count(HELD) == 150
    assert ledger.evicted == 1000

    for n in range(1, 151):
        ledger.done(ledger.records[mid(n)], T0 + 2000, acked=True)
    assert len(ledger.records) == 100
    assert ledger.evicted == 1050
    assert list(ledger.records) == [mid(n) for n in range(51, 151)]
    assert ledger.done_messages == 1150


def test_ready_tasks_are_never_evicted() -> None:
    ledger = Ledger(cap=10, prefix=PREFIX)
    for n in range(1, 21):
        ledger.published_task(mid(n), "b", T0)
        ledger.confirmed_task(mid(n))
    for n in range(21, 41):
        finish(ledger, n)
    assert ledger.count(READY) == 20
    assert len(ledger.records) == 20
    assert ledger.evicted == 20


def test_a_model_with_a_small_ledger_still_balances() -> None:
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 10, prefetch=1)
    for _ in range(1000):
        (seq,) = r.publish("x")
        r.receive("w1", seq)
        r.start("w1", seq)
        r.after(0.001)
        r.done("w1", seq)
    r.after(SETTLE)
    r.sample(ready=0, consumers=1, unacked=0)
    model = replay(r.events, ledger_cap=100)
    ledger = model.ledger
    assert (len(ledger.records), ledger.evicted) == (100, 900)
    assert (model.workers["w1"].received, model.workers["w1"].done) == (1000, 1000)
    assert model.balance(r.now) == (1000, 1000, True)
