"""The pacer without Textual: slices, the backlog, drawing in parts, and waiting for the screen after a key."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from tui.engine import pacing
from tui.engine.pacing import FOLD_SLICE, Pacer
from tui.engine.pool import Arrival, Inbox, WorkerOutput
from tui.model import observations as obs
from workers import protocol


def started_lines(first: int, count: int) -> bytes:
    return "".join(
        protocol.encode_started('"w1"', 1.0 + n, n, f"m-{n}", 0.0) for n in range(first, first + count)
    ).encode()


class Recorder:
    """Stands in for the model, the view and the session log, and keeps the order things happened in."""

    def __init__(self) -> None:
        self.folded: list[obs.Observation] = []
        self.recorded: list[Arrival] = []
        self.trace: list[str] = []
        self.slow = 0.0

    def fold(self, items: list[obs.Observation]) -> None:
        time.sleep(self.slow)
        self.folded += items
        self.trace.append("fold")

    def draw(self, details: bool) -> Iterator[None]:
        for part in range(3):
            yield
            self.trace.append(f"draw{part}" if details else f"figures{part}")


def flooded(monkeypatch: pytest.MonkeyPatch, tasks: int, *, input_wait: float) -> tuple[Pacer, Recorder]:
    """A pacer with ``tasks`` started lines waiting (1,000 a batch), a model slowed to 2 ms a slice, INPUT_WAIT set."""
    monkeypatch.setattr(pacing, "INPUT_WAIT", input_wait)
    inbox, seen = Inbox(), Recorder()
    seen.slow = 0.002  # a slow model: the backlog lasts the whole test
    for first in range(1, tasks + 1, 1000):
        inbox.put_many([WorkerOutput("w1", started_lines(first, 1000))])
    return Pacer(inbox, seen.fold, seen.draw), seen


def beside_the_pacer(pacer: Pacer, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run ``scenario`` while the pacer's loop runs: the loop starts 50 ms before it and is stopped right after."""

    async def run() -> None:
        loop = asyncio.create_task(pacer.run())
        await asyncio.sleep(0.05)
        await scenario()
        loop.cancel()

    asyncio.run(run())


def test_a_slice_holds_at_most_fold_slice_events_and_a_big_read_is_cut_at_a_line_end() -> None:
    inbox, seen = Inbox(), Recorder()
    inbox.put_many([WorkerOutput("w1", started_lines(1, 1000))])
    pacer = Pacer(inbox, seen.fold, seen.draw, record=seen.recorded.extend)
    sizes = []
    while pacer.fold_slice():
        sizes.append(len(seen.folded) - sum(sizes))
    assert sizes == [FOLD_SLICE] * 4
    assert [e.tag for e in seen.folded if isinstance(e, protocol.Started)] == list(range(1, 1001))
    assert b"".join(a.data for a in seen.recorded if isinstance(a, WorkerOutput)) == started_lines(1, 1000)
    assert pacer.unfolded == 0 and inbox.undecoded == 0


def test_a_tasks_line_weighs_its_items_not_one_line() -> None:
    items = [protocol.item_worked(1.0, n, f"m-{n}", "x", False, True) for n in range(200)]
    line = protocol.encode_tasks('"w1"', items).encode()
    inbox, seen = Inbox(), Recorder()
    inbox.put_many([WorkerOutput("w1", line * 4)])  # 800 tasks = 2,400 events in four lines
    pacer = Pacer(inbox, seen.fold, seen.draw)
    pacer.fold_slice()
    # The first line weighs 201 of the slice's 250; the rest is cut after one more whole line.
    assert len(seen.folded) == 1200, "one slice took two 200-item lines, not all four"


def test_fold_all_folds_everything_but_not_while_a_tick_folds_on_its_own() -> None:
    inbox, seen = Inbox(), Recorder()
    pacer = Pacer(inbox, seen.fold, seen.draw)
    inbox.put_many([WorkerOutput("w1", started_lines(1, 700))])
    pacer.ticking = True
    pacer.fold_all()
    assert seen.folded == [] and pacer.unfolded == 1
    pacer.ticking = False
    pacer.fold_all()
    assert len(seen.folded) == 700 and pacer.unfolded == 0


def test_without_an_inbox_there_is_nothing_to_fold() -> None:
    seen = Recorder()
    pacer = Pacer(None, seen.fold, seen.draw)
    assert pacer.fold_slice() is False and pacer.unfolded == 0


def test_a_tick_with_nothing_behind_draws_every_part_with_the_details() -> None:
    inbox, seen = Inbox(), Recorder()
    inbox.put(obs.Purged(1.0, 0))
    pacer = Pacer(inbox, seen.fold, seen.draw)
    asyncio.run(pacer.tick(time.perf_counter()))
    assert seen.trace[0] == "fold" and [t for t in seen.trace if t != "fold"] == ["draw0", "draw1", "draw2"]
    assert not pacer.ticking


def test_after_a_key_nothing_is_folded_or_drawn_until_the_screen_updated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key's handler ran; the pacer waits for the screen update that shows it before any more work."""
    pacer, seen = flooded(monkeypatch, 100_000, input_wait=30.0)  # only the screen update may end the wait

    async def presses() -> None:
        for _ in range(3):
            pacer.key_arrived()
            seen.trace.append("key")
            pacer.key_handled()
            await asyncio.sleep(0.2)  # the screen is slow: nothing may happen meanwhile
            seen.trace.append("screen")
            pacer.screen_updated()
            await asyncio.sleep(0.05)

    beside_the_pacer(pacer, presses)
    keys = [i for i, step in enumerate(seen.trace) if step == "key"]
    assert len(keys) == 3
    for i in keys:
        until_shown = seen.trace[i + 1 : seen.trace.index("screen", i)]
        assert until_shown == [], seen.trace[i : i + 5]
    assert seen.trace[-1] != "key" and "fold" in seen.trace[keys[-1] :], "folding went on after the update"


def test_a_key_in_the_apps_queue_waits_for_no_slice_before_its_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued, the key stops the folding at once: nothing between it and its handler, nor until its update."""
    pacer, seen = flooded(monkeypatch, 100_000, input_wait=30.0)

    async def presses() -> None:
        for _ in range(3):
            pacer.key_posted()
            seen.trace.append("posted")
            await asyncio.sleep(0.1)  # the app's queue is slow to reach the key
            pacer.key_arrived()
            pacer.key_handled()
            await asyncio.sleep(0.1)
            seen.trace.append("screen")
            pacer.screen_updated()
            await asyncio.sleep(0.05)

    beside_the_pacer(pacer, presses)
    posted = [i for i, step in enumerate(seen.trace) if step == "posted"]
    assert len(posted) == 3
    for i in posted:
        assert seen.trace[i + 1] == "screen", seen.trace[i : i + 5]
    assert "fold" in seen.trace[posted[-1] + 2 :], "folding went on after the update"


def test_a_key_that_never_reaches_its_handler_stalls_the_folding_for_input_wait_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The next key is still paired with its own screen update: the pacer waits for it, not for INPUT_WAIT."""
    pacer, seen = flooded(monkeypatch, 50_000, input_wait=0.3)

    async def presses() -> None:
        pacer.key_posted()  # dropped on its way: no handler, no update
        seen.trace.append("lost")
        await asyncio.sleep(0.6)
        pacer.key_posted()
        pacer.key_arrived()
        pacer.key_handled()
        seen.trace.append("key")
        await asyncio.sleep(0.05)
        seen.trace.append("screen")
        pacer.screen_updated()
        await asyncio.sleep(0.05)

    beside_the_pacer(pacer, presses)
    lost, key = seen.trace.index("lost"), seen.trace.index("key")
    assert "fold" in seen.trace[lost:key], "the lost key stalled the folding for good"
    assert seen.trace[key + 1] == "screen", seen.trace[key : key + 4]
    assert "fold" in seen.trace[key + 2 :]


def test_a_screen_that_never_updates_stalls_the_folding_for_input_wait_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pacing, "INPUT_WAIT", 0.05)
    inbox, seen = Inbox(), Recorder()
    inbox.put_many([WorkerOutput("w1", started_lines(1, 2000))])
    pacer = Pacer(inbox, seen.fold, seen.draw)

    async def run() -> None:
        pacer.key_arrived()
        pacer.key_handled()
        await asyncio.wait_for(pacer.tick(time.perf_counter()), 5)

    asyncio.run(run())
    assert len(seen.folded) > 0


def test_a_key_that_comes_as_the_last_one_is_shown_waits_for_its_own_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """The screen shows key 1 and key 2 is handled before the pacer's turn: no slice until key 2 is shown too."""
    pacer, seen = flooded(monkeypatch, 50_000, input_wait=30.0)

    async def presses() -> None:
        pacer.key_arrived()
        pacer.key_handled()
        await asyncio.sleep(0.1)  # the pacer waits for key 1's update
        pacer.screen_updated()  # key 1 shown; the pacer's wake-up is due, but key 2 comes first
        pacer.key_arrived()
        seen.trace.append("key 2")
        pacer.key_handled()
        await asyncio.sleep(0.2)
        seen.trace.append("screen 2")
        pacer.screen_updated()
        await asyncio.sleep(0.05)

    beside_the_pacer(pacer, presses)
    second = seen.trace.index("key 2")
    assert seen.trace[second + 1] == "screen 2", seen.trace[second : second + 4]
    assert "fold" in seen.trace[second:], "folding went on after key 2's update"


def test_a_flood_the_fold_keeps_up_with_is_drawn_as_one_behind() -> None:
    """Over FLOOD_EVENTS a tick, caught up or not: the figures every BEHIND_DRAW_SECONDS, the details every second.

    With 8 workers draining, the fold kept up and every tick drew everything: the screen updates
    were 40 % of the UI thread, and a key press waited behind them (p95 140-170 ms).
    """
    inbox, seen = Inbox(), Recorder()
    pacer = Pacer(inbox, seen.fold, seen.draw)
    began = time.perf_counter()
    flood = pacing.FLOOD_EVENTS + 100

    def tick(at: float, lines: int) -> list[str]:
        seen.trace.clear()
        inbox.put_many([WorkerOutput("w1", started_lines(1, lines))])
        asyncio.run(pacer.tick(began + at))
        assert pacer.unfolded == 0, "caught up: nothing behind"
        return [t for t in seen.trace if t != "fold"]

    everything, figures = ["draw0", "draw1", "draw2"], ["figures0", "figures1", "figures2"]
    assert tick(0.0, flood) == everything, "the first tick draws it all"
    assert tick(pacing.REFRESH_SECONDS, flood) == []
    assert tick(pacing.BEHIND_DRAW_SECONDS, flood) == figures
    assert tick(pacing.BEHIND_DRAW_SECONDS + pacing.REFRESH_SECONDS, flood) == []
    assert tick(pacing.DETAIL_SECONDS, flood) == everything
    assert tick(pacing.DETAIL_SECONDS + pacing.REFRESH_SECONDS, 10) == everything, "the flood is over"


@pytest.mark.parametrize(("asked", "fps"), [(None, "120"), ("30", "30")])
def test_the_dashboard_updates_the_screen_at_up_to_120_frames_unless_told(asked: str | None, fps: str) -> None:
    """A key's screen update waits for the next frame: 8 ms at most, not Textual's 17 (TEXTUAL_FPS still wins)."""
    env = {k: v for k, v in os.environ.items() if k != "TEXTUAL_FPS"} | ({"TEXTUAL_FPS": asked} if asked else {})
    code = "import tui.cli, textual.constants as c; print(c.MAX_FPS)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == fps, out


def test_the_benchmarks_run_the_dashboard_at_its_own_frame_rate() -> None:
    """benchmarks/dashboard.py imported Textual before tui: its app ran at Textual's 60 frames, not the dashboard's."""
    env = {k: v for k, v in os.environ.items() if k != "TEXTUAL_FPS"}
    code = "import benchmarks.cli, textual.screen as s; print(round(1 / s.UPDATE_PERIOD))"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "120", out
