"""SVG snapshots of the dashboard showing a replayed session: fixed size, fixed clock, no broker.

Regenerate after an intended visual change with
``.venv/bin/python -m pytest tests/test_snapshots.py --snapshot-update`` and look at the SVGs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Input

from tests.recordings import ODD_HEAVY, SNAPSHOT_NOW, TUTORIAL, replay, session_snapshot
from tui.engine.backend import LabConfig
from tui.model.scenarios import Scenario
from tui.model.state import FROM_MANAGEMENT
from tui.view.app import DispatchLab

SIZE = (120, 36)
PASSWORD = "s3cret"
CONFIG = LabConfig(url=f"amqp://guest:{PASSWORD}@localhost:5672/%2F", queue="task_queue")
# Fixed presets: a new scenario file must not change these pictures.
PRESETS = {
    "tutorial": Scenario("tutorial", "The tutorial's five messages.", TUTORIAL),
    "odd-heavy": Scenario("odd-heavy", "Odd tasks heavy, even tasks light.", ODD_HEAVY),
}

SnapCompare = Callable[..., bool]
SNAPSHOTS = Path(__file__).parent / "__snapshots__" / "test_snapshots"


def make_app() -> DispatchLab:
    """The dashboard over a replayed mid-run: w1 killed, w2 busy with a redelivered task waiting, w3 idle."""
    model = replay(session_snapshot().events, mode=CONFIG.mode)  # as tui.launch builds it
    return DispatchLab(CONFIG, model, backend=None, clock=lambda: SNAPSHOT_NOW, presets=PRESETS)


def test_the_replayed_model_is_what_the_pictures_show() -> None:
    """Pins the scene, so a changed picture is a changed rendering, not a changed recording."""
    model = make_app().model
    w1, w2, w3 = (model.workers[name] for name in ("w1", "w2", "w3"))
    assert (w1.status, w2.status, w3.status) == ("killed", "busy", "idle")
    assert w2.current is not None and (w2.current.label, w2.current.seconds) == ("#5", 5.0)
    assert SNAPSHOT_NOW - w2.current.started == 2.5
    assert (w2.in_hand, w2.waiting, w2.redelivered) == (2, 1, 1)
    assert w2.silent_for(SNAPSHOT_NOW) is None and w3.silent_for(SNAPSHOT_NOW) is None  # not "unresponsive"
    assert model.ledger.records["ab12-5"].lifeline() == "#5 -> w2 -> working"
    assert model.ledger.records["ab12-4"].lifeline() == "#4 -> w1 -> killed -> requeued -> w2 (redelivered) -> waiting"
    assert (model.ledger.done_messages, model.ledger.redeliveries) == (4, 1)
    assert model.unacked(SNAPSHOT_NOW) == (3, FROM_MANAGEMENT)
    assert not model.stale(SNAPSHOT_NOW)


async def steady_cursor(pilot: Pilot[int]) -> None:
    """The task input's cursor blinks on a wall-clock timer; a snapshot wants it still."""
    for field in pilot.app.query(Input):
        field.cursor_blink = False


def test_main_screen(snap_compare: SnapCompare) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=steady_cursor)


def test_help_screen(snap_compare: SnapCompare) -> None:
    assert snap_compare(make_app(), press=["f1"], terminal_size=SIZE, run_before=steady_cursor)


def test_the_screen_shows_the_broker_without_its_password() -> None:
    """Wide enough for the whole header, where the broker URL comes last."""

    async def screenshot() -> str:
        app = make_app()
        async with app.run_test(size=(200, 36)) as pilot:
            await pilot.pause()
            return app.export_screenshot()

    text = asyncio.run(screenshot()).replace("&#160;", " ")
    assert "amqp://guest:***@localhost:5672/%2F" in text
    assert PASSWORD not in text


def test_the_stored_snapshots_hold_no_password() -> None:
    stored = sorted(SNAPSHOTS.glob("*.svg"))
    assert [path.name for path in stored] == ["test_help_screen.svg", "test_main_screen.svg"]
    for path in stored:
        assert PASSWORD not in path.read_text(encoding="utf-8")
