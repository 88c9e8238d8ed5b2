"""SVG snapshots of the two teaching pictures: round-robin's lopsided timeline, and the ledger inspector (F9).

Replayed sessions, fixed size, fixed clock, no broker. Regenerate after an
intended visual change with
``.venv/bin/python -m pytest tests/test_snapshots_teaching.py --snapshot-update``
and look at the SVGs (``rsvg-convert x.svg -o x.png``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import DataTable, Input

from tests.recordings import ODD_HEAVY, T0, TUTORIAL, Recorder, Recording, replay
from tui.engine.backend import LabConfig
from tui.model import observations as obs
from tui.model.ledger import AFTER_CRASH, LOST
from tui.model.scenarios import Scenario
from tui.model.state import BUSY, IDLE, KILLED
from tui.view import timeline
from tui.view.app import DispatchLab
from workers import protocol
from workers.settings import DispatchMode

SIZE = (120, 36)
PASSWORD = "t3achme"
CONFIG = LabConfig(url=f"amqp://guest:{PASSWORD}@localhost:5672/%2F", queue="task_queue")
# Fixed presets: a new scenario file must not change these pictures.
PRESETS = {
    "tutorial": Scenario("tutorial", "The tutorial's five messages.", TUTORIAL),
    "odd-heavy": Scenario("odd-heavy", "Odd tasks heavy, even tasks light.", ODD_HEAVY),
}

SnapCompare = Callable[..., bool]
SNAPSHOTS = Path(__file__).parent / "__snapshots__" / "test_snapshots_teaching"


def tick(r: Recorder, until: float, workers: tuple[str, ...]) -> None:
    """Let time pass to ``until``; live workers say ``alive`` every second, as real ones do."""
    while r.now + 1 <= until:
        r.after(1)
        r.add(*(protocol.Alive(name, r.now, 60) for name in workers))
    r.at(until)


# ----- (a) odd-heavy under round-robin: one lane packed, one idle


def session_odd_heavy_round_robin() -> Recording:
    """odd-heavy twice over at prefetch 0: w1 gets every 5 s task, w2 every 1 s one and then nothing to do."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 6101, prefetch=0)
    r.spawn("w2", 6102, prefetch=0)
    both = ("w1", "w2")
    tick(r, T0 + 1, both)
    r.publish(*ODD_HEAVY, *ODD_HEAVY)
    for seq in range(1, 9):  # unlimited prefetch: the broker pushes them all at once, alternating
        r.receive("w1" if seq % 2 else "w2", seq)
    r.start("w1", 1)  # heavy: ends at +6
    r.start("w2", 2)  # light: ends at +2
    r.sample(ready=0, consumers=2)
    for seq, end in ((4, 3), (6, 4), (8, 5)):
        tick(r, T0 + end - 1, both)
        r.done("w2", seq - 2)
        r.start("w2", seq)
    tick(r, T0 + 5, both)
    r.done("w2", 8)  # w2 is done with all it was given: from here on it only waits
    for seq, end in ((3, 6), (5, 11)):
        tick(r, T0 + end, both)
        r.done("w1", seq - 2)
        r.start("w1", seq)
    tick(r, T0 + 12.8, both)
    r.sample(ready=0, consumers=2)
    return r.recording()


TIMELINE_NOW = T0 + 13
"""w1 is 2 s into heavy #5 with #7 waiting behind it; w2 has been idle for 8 s."""


def timeline_app() -> DispatchLab:
    model = replay(session_odd_heavy_round_robin().events, mode=DispatchMode(0, "manual"))
    return DispatchLab(CONFIG, model, backend=None, clock=lambda: TIMELINE_NOW, presets=PRESETS)


def test_the_round_robin_scene_is_lopsided() -> None:
    """Pins the scene, so a changed picture is a changed rendering, not a changed recording."""
    model = timeline_app().model
    w1, w2 = model.workers["w1"], model.workers["w2"]
    assert (w1.status, w2.status) == (BUSY, IDLE)
    assert w1.current is not None and w1.current.label == "#5" and (w1.in_hand, w1.waiting) == (2, 1)
    assert [b.label for b in w1.lane] == ["#1", "#3", "#5"] and [b.label for b in w2.lane] == ["#2", "#4", "#6", "#8"]
    assert (w1.done, w2.done, w2.in_hand) == (2, 4, 0)
    assert w1.silent_for(TIMELINE_NOW) is None and w2.silent_for(TIMELINE_NOW) is None
    assert not model.stale(TIMELINE_NOW)
    width = 75  # 80 columns less the names: the axis runs from T0 over timeline.MIN_WINDOW seconds
    lanes = [lane[5:] for lane in timeline.render(model, TIMELINE_NOW, 80).plain.splitlines()[:2]]

    def column(seconds: float) -> int:
        return int(seconds / timeline.MIN_WINDOW * width)

    between = slice(column(5) + 1, column(13))  # from w2's last done to now
    assert set(lanes[1][between]) == {"·"}, f"w2 should idle from 5 s on: {lanes}"
    assert "·" not in lanes[0][between], f"w1 should be busy all along: {lanes}"


async def steady_cursor(pilot: Pilot[int]) -> None:
    """The task input's cursor blinks on a wall-clock timer; a snapshot wants it still."""
    for field in pilot.app.query(Input):
        field.cursor_blink = False


def test_round_robin_timeline(snap_compare: SnapCompare) -> None:
    assert snap_compare(timeline_app(), terminal_size=SIZE, run_before=steady_cursor)


# ----- (b) the ledger inspector: a crash redelivery and an auto-ack loss


def session_crash_then_loss() -> Recording:
    """Manual ack: w1 is killed and its two tasks come back to w2. Then auto ack: w2 is killed and two are lost."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 6201, prefetch=0)
    r.spawn("w2", 6202, prefetch=0)
    tick(r, T0 + 1, ("w1", "w2"))
    r.publish(*TUTORIAL[:4])
    r.receive("w1", 1)
    r.receive("w2", 2)
    r.receive("w1", 3)
    r.receive("w2", 4)
    r.start("w1", 1)
    r.start("w2", 2)
    r.after(0.5)
    r.kill("w1")  # holding #1 (working) and #3 (waiting): the broker requeues both
    r.after(0.01)
    r.receive("w2", 1, 3, redelivered=True)
    tick(r, T0 + 3, ("w2",))
    r.done("w2", 2)
    r.start("w2", 4)  # 4 s
    tick(r, T0 + 7, ("w2",))
    r.done("w2", 4)
    r.start("w2", 1)  # 1 s
    tick(r, T0 + 8, ("w2",))
    r.done("w2", 1)
    r.start("w2", 3)  # 3 s
    tick(r, T0 + 9, ("w2",))
    r.spawn("w3", 6203, prefetch=0)
    tick(r, T0 + 11, ("w2", "w3"))
    r.done("w2", 3)
    r.sample(ready=0, consumers=2, unacked=0)
    r.after(0.5)
    r.add(obs.ModeRequested(r.now, 0, "auto"))  # F7: manual -> auto
    r.after(0.01)
    r.mode("w2", 0, "auto")
    r.mode("w3", 0, "auto")
    tick(r, T0 + 12, ("w2", "w3"))
    r.publish("Fifth message.....", "Hello.", "Bye..")  # #5, #6, #7
    r.receive("w2", 5)
    r.receive("w3", 6)
    r.receive("w2", 7)
    r.start("w2", 5)  # 5 s
    r.start("w3", 6)  # 1 s
    tick(r, T0 + 13, ("w2", "w3"))
    r.done("w3", 6)  # acked: auto ack took it at delivery
    r.after(0.5)
    r.kill("w2")  # holding #5 (working) and #7 (waiting), both already forgotten by the broker
    tick(r, T0 + 14.5, ("w3",))
    r.sample(ready=0, consumers=1, unacked=0)
    return r.recording()


INSPECTOR_NOW = T0 + 15
SELECTED = 4
"""Rows are newest first (#7 ... #1): four steps down is #3, killed with w1 and done by w2."""


def inspector_app() -> DispatchLab:
    model = replay(session_crash_then_loss().events, mode=DispatchMode(0, "auto"))
    return DispatchLab(CONFIG, model, backend=None, clock=lambda: INSPECTOR_NOW, presets=PRESETS)


def test_the_inspector_scene_has_a_crash_redelivery_and_a_loss() -> None:
    model = inspector_app().model
    ledger = model.ledger
    assert (ledger.published, ledger.done_messages, ledger.redeliveries, ledger.lost, ledger.duplicates) == (
        7,
        5,
        2,
        2,
        0,
    )
    assert sorted(ledger.lost_ids) == ["ab12-5", "ab12-7"]
    assert {name: w.status for name, w in model.workers.items()} == {"w1": KILLED, "w2": KILLED, "w3": IDLE}
    rows = ledger.recent(300)
    assert [r.label() for r in rows] == ["#7", "#6", "#5", "#4", "#3", "#2", "#1"]
    chosen = rows[SELECTED]
    assert chosen.lifeline() == "#3 -> w1 -> killed -> requeued -> w2 (redelivered) -> done"
    assert [d.why for d in chosen.deliveries] == ["first delivery", AFTER_CRASH]
    assert rows[0].state == LOST and rows[0].lifeline() == "#7 -> w2 -> killed -> lost"
    assert model.workers["w3"].silent_for(INSPECTOR_NOW) is None


async def select_a_redelivered_task(pilot: Pilot[int]) -> None:
    await steady_cursor(pilot)
    await pilot.press("f9")
    await pilot.pause()
    table = pilot.app.screen.query_one(DataTable)
    for _ in range(SELECTED):
        await pilot.press("down")
    await pilot.pause()
    assert table.cursor_row == SELECTED


def test_message_inspector(snap_compare: SnapCompare) -> None:
    assert snap_compare(inspector_app(), terminal_size=SIZE, run_before=select_a_redelivered_task)


def test_the_stored_snapshots_hold_no_password() -> None:
    stored = sorted(SNAPSHOTS.glob("*.svg"))
    assert [path.name for path in stored] == ["test_message_inspector.svg", "test_round_robin_timeline.svg"]
    for path in stored:
        assert PASSWORD not in path.read_text(encoding="utf-8")
