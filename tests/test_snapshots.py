"""SVG snapshots of the dashboard showing a replayed session: fixed size, fixed clock, no broker.

Regenerate after an intended visual change with
``.venv/bin/python -m pytest tests/test_snapshots.py --snapshot-update`` and look at the SVGs.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from tests.recordings import ODD_HEAVY, SNAPSHOT_NOW, TUTORIAL, replay, session_snapshot
from tui.engine.backend import LabConfig
from tui.model.scenarios import Scenario
from tui.model.state import FROM_MANAGEMENT
from tui.view.app import DispatchLab
from tui.view.main_view import TOO_SMALL

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


SIZES = {"80x24": (80, 24), "100x30": (100, 30), "120x36": (120, 36), "200x50": (200, 50)}
"""A class's terminal, a laptop's, a projector's, a wide monitor's."""


@pytest.mark.parametrize("size", list(SIZES))
def test_main_screen(snap_compare: SnapCompare, size: str) -> None:
    assert snap_compare(make_app(), terminal_size=SIZES[size], run_before=steady_cursor)


def test_messages_screen_covers_a_small_terminal(snap_compare: SnapCompare) -> None:
    assert snap_compare(make_app(), press=["f9"], terminal_size=(80, 24), run_before=steady_cursor)


def screen_text(size: tuple[int, int], *keys: str) -> list[str]:
    """The screen's rows as plain text, after pressing ``keys``."""

    async def rows() -> list[str]:
        app = make_app()
        async with app.run_test(size=size) as pilot:
            await steady_cursor(pilot)
            for key in keys:
                await pilot.press(key)
            await pilot.pause()
            return ["".join(segment.text for segment in strip) for strip in app.screen._compositor.render_strips()]

    return asyncio.run(rows())


def test_a_class_sees_every_figure_at_80x24() -> None:
    """The queue's ready, unacked, consumers and done, each worker's received/done/holds, the publisher, the keys."""
    rows = screen_text((80, 24))
    screen = "\n".join(rows)
    for label in ("ready", "unacked", "consumers", "done"):
        assert any(row.startswith(f"│{label} ") for row in rows), f"no {label} row:\n{screen}"
    model = make_app().model
    for worker in model.workers.values():
        counts = f"received {worker.received} done {worker.done} holds {worker.in_hand}"
        assert any(counts in row for row in rows), f"{worker.name}: no {counts!r}:\n{screen}"
    assert "task " in rows[-3] and "Send" in rows[-3], screen
    keys = rows[-2] + rows[-1]
    for key in ("f1 Help", "f2 +Worker", "f3 Kill", "f4 Stop", "f6 Prefetch", "f7 Ack", "f9 Msgs", "^s Save"):
        assert key in keys, f"{key} missing from the keys:\n{screen}"


@pytest.mark.parametrize("size", [(100, 30), (120, 36)])
def test_from_100_columns_no_figure_or_source_is_cut(size: tuple[int, int]) -> None:
    rows = screen_text(size)
    screen = "\n".join(rows)
    for source in ("passive declare", "management API, ~5 s behind", "runs 4, duplicates 0", "auto ack, worker died"):
        assert source in screen, f"{source!r} cut:\n{screen}"
    for counts in (r"received +3 +done 1\b", r"holds +2 +redelivered 1\b"):  # w2's, in a card or a row
        assert re.search(counts, screen), f"{counts!r} cut:\n{screen}"
    assert "f9 Msgs" in screen and "^s Save" in screen, screen


@pytest.mark.parametrize("size", [(69, 24), (80, 19)])
def test_below_the_smallest_size_the_screen_says_how_large_it_must_be(size: tuple[int, int]) -> None:
    rows = screen_text(size)
    shown = [row.strip() for row in rows if row.strip()]
    assert shown == [TOO_SMALL], rows
    assert TOO_SMALL == "enlarge the terminal to at least 70×20"


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
    assert [path.name for path in stored] == [
        "test_help_screen.svg",
        "test_main_screen[100x30].svg",
        "test_main_screen[120x36].svg",
        "test_main_screen[200x50].svg",
        "test_main_screen[80x24].svg",
        "test_messages_screen_covers_a_small_terminal.svg",
    ]
    for path in stored:
        assert PASSWORD not in path.read_text(encoding="utf-8")
