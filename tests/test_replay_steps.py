"""A replay steps through time: the figures at any moment are the model folded up to it, and say they were recorded.

Pure tests step ``tui.engine.replay.Replay`` over the recordings and compare each
moment with a fresh model folded up to it; Pilot tests press the keys in a replay
opened by ``replay_main``; one measures a step on a 100,000-event log.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Footer, Static

from tests.recordings import PREFIX, T0, Recorder, Recording, session_forgotten_ack, session_kill, session_mode_change
from tests.test_replay import STARTED, opened_by_replay_main, saved_session
from tui.engine.replay import Replay
from tui.engine.session_log import SessionLog
from tui.model import observations as obs
from tui.model.state import FROM_MANAGEMENT, KILLED, Model
from tui.view.app import DispatchLab
from tui.view.widgets.lab_header import LabHeader
from tui.view.widgets.queue_panel import HELD_NOW, QueueFigures, QueuePanel
from tui.view.widgets.worker_card import WorkerCard
from workers import protocol

SESSIONS: dict[str, Callable[[], Recording]] = {
    "kill": session_kill,
    "mode change": session_mode_change,
    "forgotten ack": session_forgotten_ack,
}


def items_of(recording: Recording) -> list[obs.Observation]:
    """The session as the dashboard saves it: SessionStarted first."""
    return [STARTED, *recording.events]


def folded_until(items: list[obs.Observation], when: float) -> Model:
    """A fresh model folded with every item up to ``when`` (the recordings' times never go back)."""
    model = Model()
    model.apply_all([item for item in items if getattr(item, "ts", T0) <= when])
    return model


def figures(model: Model, now: float) -> tuple[object, ...]:
    """What the screen shows of a model at ``now``: the queue's figures, each worker's, every task's story."""
    ledger = model.ledger
    workers = {
        name: (w.status, w.received, w.done, w.redelivered, w.in_hand, w.current.label if w.current else None)
        for name, w in model.workers.items()
    }
    return (
        model.events,
        (ledger.published, ledger.confirmed, ledger.done_messages, ledger.done_runs, ledger.redeliveries),
        (ledger.lost, ledger.duplicates, ledger.purged),
        (model.queue.ready, model.queue.consumers, model.unacked(now), model.balance(now), model.stale(now)),
        (model.mode, model.broker_state, model.rate(now)),
        workers,
        [record.lifeline() for record in ledger.records.values()],
    )


def moments(items: list[obs.Observation]) -> list[float]:
    """Every time in the recording, and half-way between each two."""
    times = sorted({float(getattr(item, "ts", T0)) for item in items})
    halves = [(a + b) / 2 for a, b in itertools.pairwise(times)]
    return sorted({*times, *halves})


# ----- the pure stepping


@pytest.mark.parametrize("every", [1, 3, 7, None], ids=["every event", "every 3", "every 7", "default"])
@pytest.mark.parametrize("session", list(SESSIONS))
def test_each_moment_shows_the_model_folded_up_to_it(session: str, every: int | None) -> None:
    items = items_of(SESSIONS[session]())
    replay = Replay(items, every=every)
    model = replay.model
    assert (replay.now, replay.position) == (replay.end, len(items)), "a replay opens on the final state"
    assert figures(model, replay.end) == figures(folded_until(items, replay.end), replay.end)
    # Backwards from the end, then forwards from the start: each moment as a fresh fold shows it.
    for when in [*reversed(moments(items)), *moments(items)]:
        replay.seek(when)
        assert replay.now == when
        assert figures(replay.model, when) == figures(folded_until(items, when), when), when
    assert replay.model is model, "the view holds this model: a step must change it in place"


@pytest.mark.parametrize("session", list(SESSIONS))
def test_back_and_forth_returns_to_the_same_figures(session: str) -> None:
    items = items_of(SESSIONS[session]())
    replay = Replay(items, every=4)
    middle = (replay.start + replay.end) / 2
    replay.seek(middle)
    there = figures(replay.model, replay.now)
    assert there == figures(folded_until(items, middle), middle)
    assert 0 < replay.position < len(items)
    for steps in (1, 3, 9):  # the middle is more than 9 s from either end
        for _ in range(steps):
            replay.step(-1)
        for _ in range(steps):
            replay.step(1)
        assert replay.now == pytest.approx(middle)
        assert figures(replay.model, replay.now) == there, steps
    replay.next_event()
    replay.previous_event()
    assert figures(replay.model, replay.now) == figures(folded_until(items, replay.now), replay.now)
    replay.to_start()
    replay.to_end()
    assert figures(replay.model, replay.now) == figures(folded_until(items, replay.end), replay.end)


def test_playback_folds_across_a_checkpoint_rather_than_restoring_it(monkeypatch: pytest.MonkeyPatch) -> None:
    items = items_of(session_kill())
    replay = Replay(items, every=20)  # no 0.1 s of the session holds more than 20 events
    replay.seek(T0)
    loads: list[int] = []
    loaded = Replay._loaded
    monkeypatch.setattr(Replay, "_loaded", staticmethod(lambda checkpoint: loads.append(1) or loaded(checkpoint)))
    while not replay.at_end:
        replay.step(0.1)
        assert figures(replay.model, replay.now) == figures(folded_until(items, replay.now), replay.now)
    assert loads == [], "a step forward by a few events restored a checkpoint"
    replay = Replay(items, every=5)
    replay.to_start()
    loads.clear()
    replay.to_end()
    assert loads == [1], "a jump over many checkpoints restores the last one"


def test_a_step_stops_at_either_end() -> None:
    items = items_of(session_kill())
    replay = Replay(items)
    replay.step(1)
    assert (replay.now, replay.position) == (replay.end, len(items))
    replay.to_start()
    replay.step(-1)
    replay.previous_event()
    assert replay.now == replay.start == T0
    assert replay.position == sum(1 for item in items if getattr(item, "ts", T0) == T0)


def test_an_event_step_stops_where_a_task_moved_not_at_heartbeats_or_samples() -> None:
    """Kill session: publish at +1, the kill at +1.5, the redeliveries at +1.51, then each finish."""
    recording = session_kill()
    items = items_of(recording)
    replay = Replay(items)
    replay.to_start()
    visited = []
    while not replay.at_end:
        replay.next_event()
        visited.append(round(replay.now - T0, 2))
    assert visited == [1.0, 1.5, 1.51, 3.01, 7.01, 8.01, 11.01, 19.01], visited
    replay.seek(recording.ts("killed"))  # the kill has happened
    assert replay.model.workers["w1"].status == KILLED
    replay.previous_event()
    assert replay.now == T0 + 1.0 and replay.model.workers["w1"].status != KILLED, "a step back undoes the kill"
    assert replay.model.workers["w1"].in_hand == 2


def test_the_position_reads_as_time_from_start_of_total_and_events() -> None:
    items = items_of(session_kill())
    replay = Replay(items)
    assert replay.describe() == f"replay 0:19.0 / 0:19.0 · event {len(items)}/{len(items)}"
    replay.seek(T0 + 1.5)
    assert replay.describe(playing=True) == f"replay ▶ 0:01.5 / 0:19.0 · event {replay.position}/{len(items)}"


# ----- a big log: how long a step takes


def flood(tasks: int) -> list[obs.Observation]:
    """Four workers at prefetch 1 doing ``tasks`` short tasks, with samples and heartbeats: 5 events a task."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    workers = ("w1", "w2", "w3", "w4")
    for index, name in enumerate(workers):
        r.spawn(name, 6000 + index, prefetch=1)
    r.after(1)
    for batch in range(tasks // len(workers)):
        seqs = r.publish(*["t."] * len(workers))
        for name, seq in zip(workers, seqs, strict=True):
            r.receive(name, seq)
            r.start(name, seq)
        r.after(0.05)
        for name, seq in zip(workers, seqs, strict=True):
            r.done(name, seq)
        if batch % 20 == 0:
            r.sample(ready=0, consumers=len(workers), unacked=len(workers))
            r.add(*(protocol.Alive(name, r.now, 30) for name in workers))
    return [STARTED, *r.events]


@pytest.mark.timeout(120)
def test_a_step_on_a_100000_event_log_folds_at_most_a_checkpoints_worth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = flood(20_000)
    assert len(items) > 100_000
    replay = Replay(items, Model(prefix=PREFIX))
    folded: list[int] = []
    fold = replay.model.apply_all

    def counting(batch: Any) -> None:
        folded.append(len(batch))
        fold(batch)

    replay.model.apply_all = counting  # type: ignore[method-assign]
    moves: list[tuple[str, Callable[[], None]]] = [
        ("back", lambda: replay.step(-1)),
        ("forward", lambda: replay.step(1)),
        ("event", replay.previous_event),
        ("event", replay.next_event),
        ("edge", replay.to_end),
        ("edge", replay.to_start),
    ]
    for where in (replay.end, replay.end - 2.5, (replay.start + replay.end) / 2, replay.start + 10):
        for kind, move in moves:
            replay.seek(where)
            folded.clear()
            move()
            # Back from a checkpoint: at most its worth. Forward: what is left of an interval, and at most one more.
            assert sum(folded) <= replay.every * (1 if kind == "back" else 2), (kind, where, folded)
    assert replay.every == 10_000
    # The bound above is what keeps a step short (measured: median 14 ms back, 4 ms forward on 2 busy cores);
    # the time itself is not asserted here: a shared machine makes wall time a benchmark's business, not a test's.

    # Prepared ahead (as the app does once the screen shows a step), a step back restores nothing.
    loads: list[int] = []
    loaded = Replay._loaded
    monkeypatch.setattr(Replay, "_loaded", staticmethod(lambda checkpoint: loads.append(1) or loaded(checkpoint)))
    prepared: list[float] = []
    for where in (replay.end, replay.end - 2.5, (replay.start + replay.end) / 2):
        replay.seek(where)
        replay.prepare()
        loads.clear()
        gc.collect()  # a collection due mid-step is not the step's work (0.31 s once in a full suite, likely one)
        began = time.thread_time()  # the step's own work: a busy machine's wait for a core is not the replay's
        replay.step(-1)
        prepared.append(time.thread_time() - began)
        assert loads == [] and replay.now == pytest.approx(where - 1)
    assert figures(replay.model, replay.now) == figures(folded_until(items, replay.now), replay.now)
    assert max(prepared) < 0.25, prepared


# ----- the app: keys, the clock, the labels


def pressed(app: DispatchLab, size: tuple[int, int], keys: list[list[str]], look: Callable[[], object]) -> list[object]:
    """Press each group of keys in turn, and look after each group."""
    seen: list[object] = []

    async def run() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            for group in keys:
                await pilot.press(*group)
                await pilot.pause()
                seen.append(look())

    asyncio.run(run())
    return seen


def header(app: DispatchLab) -> str:
    return str(app.query_one(LabHeader).content)


def cards(app: DispatchLab) -> dict[str, str]:
    return {card.worker_name: "\n".join(str(s.content) for s in card.query(Static)) for card in app.query(WorkerCard)}


def panel(app: DispatchLab) -> str:
    figures_widget = app.query_one(QueueFigures)
    rows = "\n".join(f"{label} {value} {source}" for label, value, _, source in figures_widget.rows)
    return rows + "\n" + "\n".join(str(s.content) for s in app.query_one(QueuePanel).query(Static))


@pytest.mark.timeout(60)
def test_keys_move_the_replay_and_the_screen_shows_that_moment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = opened_by_replay_main([str(saved_session(tmp_path))], monkeypatch)
    total = len(session_kill().events) + 1

    def look() -> tuple[str, dict[str, str], float]:
        return header(app), cards(app), app.clock()

    keys = [["home"], ["full_stop"], ["full_stop"], ["comma"], ["right", "right", "right"], ["left"], ["end"]]
    seen = pressed(app, (120, 36), keys, look)
    texts = [(h, c) for h, c, _ in seen]  # type: ignore[misc]
    clocks = [clock for _, _, clock in seen]  # type: ignore[misc]
    assert clocks == pytest.approx([T0, T0 + 1, T0 + 1.5, T0 + 1, T0 + 4, T0 + 3, T0 + 19.01]), clocks
    start, published, killed, back, at_4, at_3, end = texts
    assert start[0].startswith("replay 0:00.0 / 0:19.0 · event 7/"), start[0]
    assert "received 0" in start[1]["w1"] and "received 0" in start[1]["w2"], start[1]
    assert published[0].startswith("replay 0:01.0 / 0:19.0 · event "), published[0]
    assert "received 2" in published[1]["w1"] and "killed" not in published[1]["w1"], published[1]
    assert "killed" in killed[1]["w1"]
    assert back == published, "a step back shows the moment as it was"
    assert "done 1" in at_4[1]["w2"] and "done 0" in at_3[1]["w2"], (at_4[1], at_3[1])
    assert end[0].startswith(f"replay 0:19.0 / 0:19.0 · event {total}/{total} (read-only) "), end[0]
    assert "done 4" in end[1]["w2"]


@pytest.mark.timeout(60)
def test_a_card_goes_when_the_replay_steps_back_to_before_its_worker_came(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = SessionLog(tmp_path / "events.jsonl")
    log.start()
    log.add(items_of(session_forgotten_ack()))  # w2 comes after w1 stopped
    log.close()
    app = opened_by_replay_main([str(log.path)], monkeypatch)
    seen = pressed(app, (120, 36), [["home"], ["end"]], lambda: sorted(cards(app)))
    assert seen == [["w1"], ["w1", "w2"]]


@pytest.mark.timeout(60)
def test_space_plays_at_the_recorded_speed_and_pauses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = opened_by_replay_main([str(saved_session(tmp_path))], monkeypatch)
    said: list[str] = []

    async def run() -> None:
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.pause()
            began = time.monotonic()  # before the key: the play begins as it is handled, and a busy pause may be long
            await pilot.press("space")  # at the end: plays from the start
            await pilot.pause()
            said.append(header(app))
            deadline = began + 10
            while app.clock() < T0 + 0.5 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            played = app.clock() - T0
            assert 0.5 <= played <= time.monotonic() - began + 0.3, played
            await pilot.press("space")
            await pilot.pause()
            paused_at = app.clock()
            said.append(header(app))
            await asyncio.sleep(0.3)
            assert app.clock() == paused_at, "paused, the clock stands"

    asyncio.run(run())
    assert said[0].startswith("replay ▶ 0:00."), said
    assert said[1].startswith("replay 0:0") and "▶" not in said[1], said


@pytest.mark.timeout(60)
def test_the_footer_shows_the_replay_keys_and_a_live_dashboard_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def footer_keys(app: DispatchLab) -> list[str]:
        return [str(getattr(key, "key", "")) for key in app.query_one(Footer).walk_children()]

    replay_app = opened_by_replay_main([str(saved_session(tmp_path))], monkeypatch)
    (shown,) = pressed(replay_app, (80, 24), [[]], lambda: footer_keys(replay_app))
    assert {"left", "right", "comma", "full_stop", "home", "end", "space"} <= set(shown), shown  # type: ignore[arg-type]
    live = DispatchLab(replay_app.config, Model(), None, clock=lambda: T0)
    (shown,) = pressed(live, (120, 36), [[]], lambda: footer_keys(live))
    assert not {"left", "right", "comma", "home", "space"} & set(shown), shown  # type: ignore[arg-type]


def recorded_session(folder: Path) -> Path:
    """The kill session with the management API's unacked figure, a broker outage, and other consumers."""
    recording = session_kill()
    r = Recorder(t0=recording.end)
    r.after(1)
    r.add(obs.QueueSample(r.now, 0, 2, 1, (obs.ExternalConsumer("them:5672", 1, True, 1),)))
    r.mark("other consumer")
    r.after(1)
    r.broker("reconnecting", attempt=2)
    r.mark("broker down")
    r.after(3)
    r.connected()
    r.sample(ready=0, consumers=1, unacked=0)
    log = SessionLog(folder / "events.jsonl")
    log.start()
    log.add([STARTED, *recording.events, *r.events])
    log.close()
    return log.path


@pytest.mark.timeout(60)
def test_a_replay_labels_its_figures_as_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = opened_by_replay_main([str(recorded_session(tmp_path))], monkeypatch)

    def look() -> tuple[str, str]:
        return header(app), panel(app)

    # The end (the broker back), a second back (reconnecting), three more (the other consumer).
    at_end, down, other = pressed(app, (160, 40), [[], ["left"], ["left", "left", "left"]], look)
    for head, figures_text in (at_end, down, other):
        assert "connected" not in head, head
        assert FROM_MANAGEMENT not in figures_text and HELD_NOW not in figures_text, figures_text
        assert "mgmt ~5 s old" not in figures_text and "ms, recorded mgmt" not in figures_text
    assert "unacked 0 recorded: management API" in at_end[1], at_end[1]
    assert "● recorded: broker reconnecting, attempt 2 " in down[0], down[0]
    assert "recorded: broker" not in at_end[0] and "recorded: broker" not in other[0]
    assert "other consumers (recorded: management API):" in other[1], other[1]
    assert "held now 0 recorded: worker events" in other[1], other[1]
