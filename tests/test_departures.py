"""Dead workers keep their card a while, then fold into one line that says where their tasks went (replayed)."""

from __future__ import annotations

import asyncio

from tests.recordings import TUTORIAL, Recorder, Recording, replay, session_auto_ack_loss, session_kill
from tui.engine.backend import LabConfig
from tui.model import departures
from tui.model.departures import KEEP_DEAD
from tui.view.app import DispatchLab
from tui.view.widgets.worker_card import WorkerCard


def test_a_killed_worker_keeps_its_card_for_a_while_then_folds() -> None:
    recording = session_kill()
    model = replay(recording.events)
    killed_at = recording.ts("killed")
    assert model.workers["w1"].exited_at == killed_at
    assert departures.fold(model, killed_at + KEEP_DEAD - 0.1) == (["w1", "w2"], [])
    assert departures.fold(model, killed_at + KEEP_DEAD) == (["w2"], ["w1"])


def test_the_folded_line_says_where_the_killed_workers_tasks_went() -> None:
    model = replay(session_kill().events)
    line = departures.departures(model, ["w1"])
    assert (line.killed, line.exited, line.went_to, line.lost, line.waiting) == (("w1",), (), (("w2", 2),), 0, 0)
    assert line.describe().startswith("w1 killed: its tasks went to w2 ×2")


def test_with_no_live_worker_left_the_dead_keep_their_cards() -> None:
    r = Recorder()
    r.spawn("w1", 7000, prefetch=1)
    r.after(1)
    r.kill("w1")
    model = replay(r.recording().events)
    assert departures.fold(model, r.now + 100) == (["w1"], [])


def test_tasks_lost_under_auto_ack_are_counted_as_lost() -> None:
    model = replay(session_auto_ack_loss().events)
    line = departures.departures(model, ["w1"])
    assert (line.went_to, line.lost) == ((), 3)
    assert "3 lost (auto ack)" in line.describe()


KILLS = 29


def session_many_kills() -> Recording:
    """29 kill-and-replace cycles, about 3.5 s apart: each new worker takes a task, is killed holding it, w1 gets it."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 7000, prefetch=1)
    for cycle in range(KILLS):
        name = f"w{cycle + 2}"
        r.after(2)
        r.spawn(name, 7001 + cycle, prefetch=1)
        (seq,) = r.publish(TUTORIAL[0])
        r.receive(name, seq)
        r.start(name, seq)
        r.after(0.5)
        r.kill(name)
        r.after(0.01)
        r.receive("w1", seq, redelivered=True)
        r.start("w1", seq)
        r.after(1)
        r.done("w1", seq)
    r.sample(ready=0, consumers=1, unacked=0)
    return r.recording()


def test_after_many_kills_the_recent_dead_keep_cards_and_the_rest_fold() -> None:
    recording = session_many_kills()
    model = replay(recording.events)
    now = recording.end
    shown, folded = departures.fold(model, now)
    # Killed 3.51 s apart, the last 1.01 s before the end: those killed in the last 10 s still show their kill.
    assert shown == ["w1", "w28", "w29", "w30"]
    assert folded == [f"w{n}" for n in range(2, 28)]
    line = departures.departures(model, folded)
    assert line.went_to == (("w1", 26),)
    assert line.describe() == (
        "w2, w3, w4, w5, w6, w7 and 20 more killed: their tasks went to w1 ×26 (F9, timeline: their history)"
    )


def test_the_dashboard_folds_the_dead_and_keeps_their_history_in_one_lane() -> None:
    recording = session_many_kills()
    model = replay(recording.events)
    config = LabConfig(url="amqp://guest@localhost:5672/%2F", queue="task_queue")
    app = DispatchLab(config, model, backend=None, clock=lambda: recording.end, presets={})

    async def run() -> tuple[list[str], str, str]:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            cards = [card.worker_name for card in app.query(WorkerCard)]
            departed = str(app.view.departed.render())
            lanes = str(app.view.timeline.render())
            return cards, departed, lanes

    cards, departed, lanes = asyncio.run(run())
    assert cards == ["w1", "w28", "w29", "w30"]
    assert departed.startswith("w2, w3, w4, w5, w6, w7 and 20 more killed: their tasks went to w1 ×26")
    names = [line[:4].strip() for line in lanes.splitlines()[:-1]]
    assert names == ["w1", "w28", "w29", "w30", "✗…"]
