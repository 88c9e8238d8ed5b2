"""A worker card repaints only what changed: the snapshot's scene, headless, no broker."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import Static

from tests.recordings import SNAPSHOT_NOW, Recorder, replay, session_snapshot
from tui.engine.backend import LabConfig
from tui.model.state import Model
from tui.view.app import DispatchLab
from tui.view.widgets.worker_card import WorkerCard
from workers import protocol

CONFIG = LabConfig(url="amqp://guest:guest@localhost:5672/%2F", queue="task_queue")

Shown = tuple[object, object, object, str | None]
"""The texts of a card's counts, task line and log, and its border title."""


async def _w2(app: DispatchLab, pilot: Pilot[None]) -> tuple[WorkerCard, list[Static]]:
    """The snapshot scene's busy card, w2, and its counts, task and log parts, once drawn."""
    await pilot.pause()
    card = app.query_one("#card-w2", WorkerCard)
    return card, [card.query_one(f".{name}", Static) for name in ("counts", "task", "log")]


def test_half_a_second_later_only_the_task_line_is_new() -> None:
    """w2 is 2.5 s into the 5 s #5: its progress moves, its counts, log and title stay (no repaint for them)."""

    async def show_again() -> tuple[Shown, Shown]:
        model = replay(session_snapshot().events, mode=CONFIG.mode)
        app = DispatchLab(CONFIG, model, backend=None, clock=lambda: SNAPSHOT_NOW)
        async with app.run_test(size=(120, 36)) as pilot:
            card, parts = await _w2(app, pilot)

            def shown() -> Shown:
                counts, task, log = (part.content for part in parts)
                return counts, task, log, card.border_title

            before = shown()
            card.show(model.workers["w2"], SNAPSHOT_NOW + 0.5)
            return before, shown()

    (counts, task, log, title), (counts_after, task_after, log_after, title_after) = asyncio.run(show_again())
    assert isinstance(task, Text) and isinstance(task_after, Text)
    assert "2.5/5.0s" in task.plain and "3.0/5.0s" in task_after.plain
    assert counts_after is counts and log_after is log  # not even updated with an equal text
    assert title_after == title == "w2 · pid 5102 · busy"


def test_without_details_only_the_counts_move_and_the_next_full_show_draws_the_rest() -> None:
    """Behind a flood the dashboard shows figures only: task and log lines wait for the next full show."""

    async def flood() -> tuple[list[str], list[str], list[str]]:
        model = replay(session_snapshot().events, mode=CONFIG.mode)
        app = DispatchLab(CONFIG, model, backend=None, clock=lambda: SNAPSHOT_NOW)
        async with app.run_test(size=(120, 36)) as pilot:
            card, parts = await _w2(app, pilot)

            def plain() -> list[str]:
                return [part.content.plain if isinstance(part.content, Text) else "" for part in parts]

            before = plain()
            w2 = model.workers["w2"]
            tag = 900
            for n in range(3):  # three quick tasks finish: counts, task line and log all change
                ts = SNAPSHOT_NOW + n * 0.01
                model.apply_all(
                    [
                        protocol.Received("w2", ts, tag + n, f"x-{n}", "quick", False),
                        protocol.Started("w2", ts, tag + n, f"x-{n}", 0.0),
                        protocol.Done("w2", ts, tag + n, f"x-{n}", True),
                    ]
                )
            card.show(w2, SNAPSHOT_NOW + 0.05, details=False)
            light = plain()
            card.show(w2, SNAPSHOT_NOW + 0.05)
            return before, light, plain()

    before, light, full = asyncio.run(flood())
    assert light[0] != before[0], "the counts did not move"
    assert light[1:] == before[1:], "task and log lines were drawn without details"
    assert full[0] == light[0] and full[1:] != before[1:], "the full show after a light one drew nothing new"
    assert full[2].endswith("[x] Done")


def test_a_task_the_broker_took_back_is_no_longer_busy_but_finishing() -> None:
    """After an ack timeout the card says the broker took the task back, and how far the work still is."""
    from tests.test_broker_steps_model import TIMED_OUT, ack_timeout_session

    session = ack_timeout_session().recording()
    model = replay(session.until("taken back"))
    now = session.ts("taken back")

    async def draw() -> tuple[str, str, str | None, set[str]]:
        app = DispatchLab(CONFIG, model, backend=None, clock=lambda: now)
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.pause()
            card = app.query_one("#card-w1", WorkerCard)
            card.show(model.workers["w1"], now)
            task, log = (card.query_one(f".{name}", Static).content for name in ("task", "log"))
            assert isinstance(task, Text) and isinstance(log, Text)
            return task.plain, log.plain, card.border_title, set(card.classes)

    task, log, title, classes = asyncio.run(draw())
    assert task.startswith("#1 taken back by the broker, finishing") and "3.0/5.0s" in task
    assert title == "w1 · pid 101 · channel closed"
    assert "-busy" not in classes and "-reconnecting" in classes
    assert "ack timeout: the broker closed the channel" in log and TIMED_OUT[:40] in log


def _class_session(workers: int) -> tuple[Model, float]:
    """``workers`` workers (lab-pc01, ...), each done with one task; lab-pc01 works on a second."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    names = [f"lab-pc{n:02d}" for n in range(1, workers + 1)]
    for n, name in enumerate(names):
        r.spawn(name, 6000 + n, prefetch=1)
    r.after(1)
    seqs = r.publish(*(["Task [red]x[/]"] * workers), "Long.....")
    for name, seq in zip(names, seqs, strict=False):
        r.receive(name, seq)
        r.start(name, seq)
        r.done(name, seq)
    r.receive(names[0], seqs[-1])
    r.start(names[0], seqs[-1])
    r.after(2)
    return replay(r.events, mode=CONFIG.mode), r.now


def _rows(workers: int, size: tuple[int, int]) -> tuple[bool, list[int], list[str], str]:
    """The grid's -crowded mark, the cards' heights and head lines, and the screen's text, once drawn."""

    async def draw() -> tuple[bool, list[int], list[str], str]:
        model, now = _class_session(workers)
        app = DispatchLab(CONFIG, model, backend=None, clock=lambda: now)
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            app.refresh_view()  # the second draw sees the layout the first one made
            await pilot.pause()
            cards = list(app.query(WorkerCard))
            heads = [str(card.query_one(".head", Static).content) for card in cards]
            screen = app.export_screenshot()
            return app.view.grid.has_class("-crowded"), [card.size.height for card in cards], heads, screen

    return asyncio.run(draw())


def test_a_class_that_does_not_fit_in_two_line_rows_takes_a_line_a_worker() -> None:
    crowded, heights, heads, _ = _rows(16, (80, 24))
    assert crowded and heights == [1] * 16, heights
    # Who, in what state, what it did: the counts before the task, which a narrow line cuts.
    assert heads[1] == "lab-pc02 · idle · done 1 holds 0", heads[1]
    assert heads[0].startswith("lab-pc01 · busy · done 1 holds 1 · #"), heads[0]


def test_a_few_workers_keep_their_two_line_rows() -> None:
    crowded, heights, heads, _ = _rows(5, (80, 24))
    assert not crowded and heights == [2] * 5, heights
    assert heads[1] == "lab-pc02 · idle", heads[1]


def test_a_class_at_120x36_takes_a_line_a_worker_too() -> None:
    crowded, heights, _, _ = _rows(16, (120, 36))
    assert crowded and heights == [1] * 16, heights


def test_selecting_past_the_rows_in_view_scrolls_the_class_to_the_selected_worker() -> None:
    async def select_last() -> tuple[bool, bool]:
        model, now = _class_session(30)
        app = DispatchLab(CONFIG, model, backend=None, clock=lambda: now)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            app.refresh_view()
            await pilot.pause()
            grid = app.view.grid
            last = grid.cards["lab-pc30"]
            hidden_before = not grid.region.contains_region(last.region)
            await pilot.press("ctrl+b")  # from the first, back to the last
            await pilot.pause()
            return hidden_before, app.selected == "lab-pc30" and grid.region.contains_region(last.region)

    hidden_before, shown_after = asyncio.run(select_last())
    assert hidden_before, "30 workers at 80x24 do not all fit: the last row starts out of view"
    assert shown_after, "Ctrl+B to the last worker scrolls its row into view"
