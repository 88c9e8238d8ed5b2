"""Pilot tests of the dashboard against the real broker: workers, publishing, kill, live modes, quit.

Each test builds the app as ``tui.launch`` does (Backend, Model, DispatchLab) on
its own queue, drives it with keys and clicks, and waits on the model's figures
with a deadline. ``backend.shutdown()`` runs whatever happens.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pika
import pytest
from rich.console import Console
from textual import events
from textual.pilot import Pilot
from textual.widgets import Input, Static

from tui.engine.backend import Backend, FeedBackend, LabConfig
from tui.launch import preflight
from tui.model import observations as obs
from tui.model.ledger import AFTER_CRASH, DONE, FIRST, LOST, MODE_CHANGE, MessageRecord
from tui.model.state import Model
from tui.view.app import DispatchLab
from tui.view.screen_updates import call_after_each_screen_update
from tui.view.widgets.publisher import MAX_COUNT
from tui.view.widgets.worker_card import WorkerCard
from workers import protocol
from workers.settings import AckMode, DispatchMode

T = TypeVar("T")

SIZE = (120, 36)
DOT = 0.2
"""Seconds per dot in these tests: long enough to catch a task in hand, short enough to be quick."""


class RecordingModel(Model):
    """The app's model, keeping every observation it folded (to check event order and times)."""

    def __init__(self, *, queue: str, mode: DispatchMode, prefix: str) -> None:
        super().__init__(queue=queue, mode=mode, prefix=prefix)
        self.seen: list[obs.Observation] = []

    def apply_all(self, items: Iterable[obs.Observation]) -> None:
        items = list(items)
        self.seen += items
        super().apply_all(items)


@dataclass
class Lab:
    """A running dashboard and what drives it."""

    app: DispatchLab
    model: RecordingModel
    backend: Backend
    pilot: Pilot[int]
    shutdown_at: float = 0.0
    """When ``backend.shutdown()`` began (epoch seconds, as event timestamps)."""

    async def until(self, condition: Callable[[], T | None], timeout: float, what: str) -> T:
        """Let the app run until ``condition`` is truthy; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.describe()}")
            await self.pilot.pause(0.1)

    async def key(self, key: str) -> float:
        """Send a key as the terminal driver does and return once the app has handled it.

        ``pilot.press`` also waits for the process to look idle (up to a second per
        wait), which never happens while workers stream events; a kill must land
        while the task is still in hand, so time-critical keys go in this way.
        Returns the seconds until the key was handled.
        """
        handled = asyncio.Event()
        started = time.perf_counter()
        self.app.post_message(events.Key(key, None))
        self.app.call_later(handled.set)  # runs after the key, in the app's message order
        await asyncio.wait_for(handled.wait(), 10)
        return time.perf_counter() - started

    async def ready(self, count: int = 2, timeout: float = 20.0) -> None:
        """Every worker is consuming and idle, and has its card."""
        await self.until(
            lambda: (
                len(self.model.workers) == count
                and all(w.status == "idle" for w in self.model.workers.values())
                and len(self.app.query(WorkerCard)) == count
            ),
            timeout,
            f"{count} idle workers",
        )

    async def type_task(self, body: str, count: int, *, keystrokes: bool = False) -> None:
        """Fill the publisher pane's task and count, and press Enter in the count.

        With ``keystrokes`` each character is a key press (a few dozen ms each in
        Pilot); otherwise the fields are set directly and only Enter is pressed.
        """
        for selector, text in (("#task-body", body), ("#task-count", str(count))):
            field = self.app.query_one(selector, Input)
            field.focus()
            field.value = ""
            if keystrokes:
                await self.pilot.press(*text)
            else:
                field.insert_text_at_cursor(text)
            assert field.value == text, f"{selector} holds {field.value!r} after typing {text!r}"
        await self.pilot.press("enter")

    def card(self, name: str) -> WorkerCard:
        return self.app.query_one(f"#card-{name}", WorkerCard)

    def card_text(self, name: str) -> str:
        """What a card's lines say, as plain text."""
        return "\n".join(str(s.content) for s in self.card(name).query(Static))

    def ours(self) -> list[MessageRecord]:
        """Our published tasks in publishing order."""
        return sorted((r for r in self.model.ledger.records.values() if r.seq is not None), key=lambda r: r.seq or 0)

    def events(self, kind: type[T]) -> list[T]:
        return [item for item in self.model.seen if isinstance(item, kind)]

    def describe(self) -> str:
        """The model in a few lines, for assertion messages."""
        lines = [f"mode {self.model.mode}, queue {self.model.queue}"]
        for w in self.model.workers.values():
            lines.append(
                f"  {w.name}: {w.status} pid {w.pid} prefetch {w.prefetch} ack {w.ack} received {w.received}"
                f" done {w.done} holds {w.in_hand} redelivered {w.redelivered} returned {w.returned}"
                f" stderr {list(w.stderr)[-2:]}"
            )
        ledger = self.model.ledger
        lines.append(
            f"  ledger: published {ledger.published} confirmed {ledger.confirmed} done {ledger.done_messages}"
            f" lost {ledger.lost} states {dict(ledger.state_counts)}"
        )
        lines += [f"  {r.lifeline()}" for r in self.ours()[:30]]
        return "\n".join(lines)


def run_lab(
    broker_url: str,
    queue: str,
    scenario: Callable[[Lab], Awaitable[None]],
    *,
    workers: int = 2,
    prefetch: int = 0,
    ack: AckMode = AckMode.MANUAL,
    seconds_per_dot: float = DOT,
    notifications: bool = False,
) -> Lab:
    """Build the app as ``tui.launch`` does, run ``scenario`` in it, and always shut the backend down.

    ``notifications``: toasts are drawn on screen (Pilot leaves them out unless asked).
    """
    config = LabConfig(
        url=broker_url,
        queue=queue,
        workers=workers,
        mode=DispatchMode(prefetch, ack),
        seconds_per_dot=seconds_per_dot,
    )
    management = preflight(config, Console(file=io.StringIO()))
    backend = Backend(config, management=management)
    model = RecordingModel(queue=config.queue, mode=config.mode, prefix=backend.prefix)
    app = DispatchLab(config, model, backend)
    lab: Lab | None = None

    async def main() -> None:
        nonlocal lab
        async with app.run_test(size=SIZE, notifications=notifications) as pilot:
            lab = Lab(app, model, backend, pilot)
            await scenario(lab)

    try:
        asyncio.run(main())
    finally:
        shutdown_at = time.time()
        backend.shutdown()
    assert lab is not None
    lab.shutdown_at = shutdown_at
    return lab


def deliveries_of(records: list[MessageRecord], worker: str) -> list[int]:
    """The sequence numbers a worker received first-hand, in order."""
    return [r.seq or 0 for r in records if r.deliveries and r.deliveries[0].worker == worker]


# ----- (a) workers start and show ready


def test_starts_workers_and_shows_them_ready(broker_url: str, queue_name: str) -> None:
    async def scenario(lab: Lab) -> None:
        await lab.ready(2)
        model = lab.model
        assert list(model.workers) == ["w1", "w2"]
        # One at a time, so the broker's round-robin starts with w1.
        w1_ready = next(e.ts for e in lab.events(protocol.Ready) if e.worker == "w1")
        w2_spawned = next(e.ts for e in lab.events(obs.WorkerSpawned) if e.worker == "w2")
        assert w2_spawned >= w1_ready
        pids = {w.pid for w in model.workers.values()}
        assert None not in pids and len(pids) == 2
        await lab.until(lambda: all("idle" in (c.border_title or "") for c in lab.app.query(WorkerCard)), 3, "cards")
        for name, worker in model.workers.items():
            title = lab.card(name).border_title or ""
            assert title.startswith(name) and f"pid {worker.pid}" in title, title
            assert "prefetch ∞ (0) · manual ack" in (lab.card(name).border_subtitle or "")
        # The broker agrees: two consumers on our queue, nothing waiting.
        await lab.until(lambda: model.queue.consumers == 2, 5, "the broker's consumer count")
        assert model.queue.ready == 0
        # The first card is selected; a click or ctrl+n/ctrl+b moves the selection.
        assert lab.app.selected == "w1" and lab.card("w1").has_class("-selected")
        await lab.pilot.click("#card-w2")
        assert lab.app.selected == "w2"
        assert lab.card("w2").has_class("-selected") and not lab.card("w1").has_class("-selected")
        await lab.pilot.press("ctrl+n")
        assert lab.app.selected == "w1"
        await lab.pilot.press("ctrl+b")
        assert lab.app.selected == "w2"

    run_lab(broker_url, queue_name, scenario)


# ----- (b) publishing from the pane


def test_tutorial_preset_goes_round_robin(broker_url: str, queue_name: str) -> None:
    async def scenario(lab: Lab) -> None:
        await lab.ready(2)
        await lab.pilot.click("#preset-tutorial")
        ledger = lab.model.ledger
        await lab.until(lambda: ledger.done_messages == 5, 15, "the five tutorial tasks done")
        records = lab.ours()
        assert [r.seq for r in records] == [1, 2, 3, 4, 5]
        assert [r.body for r in records] == list(lab.app.presets["tutorial"].tasks)
        assert all(len(r.deliveries) == 1 and r.deliveries[0].why == FIRST for r in records)
        assert deliveries_of(records, "w1") == [1, 3, 5], lab.describe()
        assert deliveries_of(records, "w2") == [2, 4], lab.describe()
        assert (ledger.published, ledger.confirmed, ledger.done_messages) == (5, 5, 5)
        assert ledger.count(DONE) == 5 and ledger.duplicates == 0 and ledger.lost == 0
        w1, w2 = lab.model.workers["w1"], lab.model.workers["w2"]
        assert (w1.received, w1.done, w2.received, w2.done) == (3, 3, 2, 2)
        await lab.until(lambda: lab.model.queue.ready == 0 and lab.model.derived_unacked() == 0, 5, "empty queue")
        await lab.pilot.pause(0.3)  # one refresh after the last done
        assert "received 3" in lab.card_text("w1") and "done 3" in lab.card_text("w1"), lab.card_text("w1")
        assert "received 2" in lab.card_text("w2") and "done 2" in lab.card_text("w2"), lab.card_text("w2")

    run_lab(broker_url, queue_name, scenario)


def test_typed_task_and_count_publish_that_many(broker_url: str, queue_name: str) -> None:
    async def scenario(lab: Lab) -> None:
        await lab.ready(2)
        await lab.type_task("typed.", 4, keystrokes=True)
        ledger = lab.model.ledger
        await lab.until(lambda: ledger.done_messages == 4, 15, "four typed tasks done")
        assert [r.body for r in lab.ours()] == ["typed."] * 4
        assert ledger.published == ledger.confirmed == 4
        assert sorted(w.done for w in lab.model.workers.values()) == [2, 2]

    run_lab(broker_url, queue_name, scenario)


def shown(renderable: object, width: int = SIZE[0]) -> str:
    """What a widget's content reads as on a terminal of ``width`` columns, as plain text."""
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


def test_presets_publish_runs_numbered_from_1_and_summed_up_side_by_side(broker_url: str, queue_name: str) -> None:
    """A typed task, then odd-heavy at prefetch 0, F6, odd-heavy at prefetch 1: two runs, compared on the main screen.

    The typed task takes the publisher's #1, so odd-heavy's heavy tasks are the publisher's
    even ones; each run numbers its own from 1, and its heavy tasks are its odd ones.
    """

    async def scenario(lab: Lab) -> None:
        await lab.ready(2)
        model, view = lab.model, lab.app.view
        runs = model.runs
        await lab.type_task("typed", 1)
        await lab.until(lambda: model.ledger.done_messages == 1, 10, "the typed task done")
        await lab.pilot.click("#preset-odd-heavy")
        await lab.until(lambda: runs.all and not runs.all[0].running, 20, "the first run finished")
        await lab.key("f6")  # prefetch 0 -> 1
        await lab.until(lambda: all(w.prefetch == 1 for w in model.workers.values()), 10, "both at prefetch 1")
        await lab.pilot.click("#preset-odd-heavy")
        await lab.until(lambda: len(runs.all) == 2 and not runs.all[1].running, 20, "the second run finished")
        first, second = runs.all
        ours = lab.ours()
        assert [r.label() for r in ours] == ["#1"] + [f"r{run}#{n}" for run in (1, 2) for n in range(1, 9)]
        heavy = [r.label() for r in ours if r.body.startswith("Heavy")]
        assert heavy == ["r1#1", "r1#3", "r1#5", "r1#7", "r2#1", "r2#3", "r2#5", "r2#7"], lab.describe()
        assert (first.mode, second.mode) == (DispatchMode(0, AckMode.MANUAL), DispatchMode(1, AckMode.MANUAL))
        # Round-robin: one worker got every heavy task, the run's odd ones; it finished last.
        assert sorted(w.labels for w in first.workers) == [["#1", "#3", "#5", "#7"], ["#2", "#4", "#6", "#8"]]
        light = min(first.workers, key=lambda w: w.busy)
        assert light.idle_while_waiting > 2 * 5 * DOT * 0.7, runs  # two heavy tasks' worth, at least
        assert second.makespan < 0.85 * first.makespan, runs
        assert all(w.idle_while_waiting < 0.25 for w in second.workers), runs
        # The main screen sums both up, side by side, and says which finished sooner: no stopwatch needed.
        await lab.pilot.pause(0.3)
        summary = shown(view.run_summary.content)
        assert re.search(rf"r1 odd-heavy\s+round-robin 0\s+{first.makespan:.1f} s\s", summary), summary
        assert re.search(rf"r2 odd-heavy\s+fair 1\s+{second.makespan:.1f} s\s", summary), summary
        assert f"{light.name} {light.busy:.1f}/{light.idle_while_waiting:.1f}" in summary, summary
        assert "r2 fair 1 finished" in summary and f"there {light.name} sat idle" in summary, summary
        # The timeline marks both runs; Ctrl+T shows the latest alone.
        lanes = shown(view.timeline.content)
        # The first run's mark is as long as the room before the next: its number at least.
        assert "▏r1" in lanes and "▏r2 odd-heavy" in lanes, lanes
        await lab.key("ctrl+t")
        await lab.pilot.pause(0.2)
        assert "r2 odd-heavy alone" in (view.timeline.border_title or "")
        lanes = shown(view.timeline.content)
        assert "▏r2 odd-heavy · fair 1" in lanes and "▏r1" not in lanes, lanes

    run_lab(broker_url, queue_name, scenario)


# ----- (c) kill: the task comes back on another card


def test_kill_redelivers_to_the_other_worker(broker_url: str, queue_name: str) -> None:
    async def scenario(lab: Lab) -> None:
        await lab.ready(2)
        model = lab.model
        w1, w2 = model.workers["w1"], model.workers["w2"]
        assert lab.app.selected == "w1"
        await lab.type_task("long task........", 2)  # 8 dots: 1.6 s of work each; one for each worker
        await lab.until(lambda: w1.current is not None, 10, "w1 working on a long task")
        victim = w1.held[w1.current.tag] if w1.current else None
        assert victim is not None
        await lab.key("f3")
        await lab.until(lambda: w1.status == "killed", 5, "w1 killed")
        await lab.until(lambda: w2.redelivered == 1, 5, "w1's task redelivered to w2")
        await lab.until(lambda: model.ledger.done_messages == 2, 10, "both tasks done")
        assert [(d.worker, d.redelivered, d.why, d.outcome) for d in victim.deliveries] == [
            ("w1", False, FIRST, "killed"),
            ("w2", True, AFTER_CRASH, "done"),
        ], victim.lifeline()
        assert victim.done_count == 1 and model.ledger.lost == 0 and model.ledger.duplicates == 0
        assert w1.exit_code == -9 and (w1.done, w2.done) == (0, 2)
        await lab.pilot.pause(0.3)  # one refresh
        assert "killed" in (lab.card("w1").border_title or "")
        assert lab.card("w1").has_class("-dead")
        assert "redelivered 1" in lab.card_text("w2"), lab.card_text("w2")

    run_lab(broker_url, queue_name, scenario)


# ----- (d) a live prefetch change


def test_prefetch_change_returns_the_waiting_tasks(broker_url: str, queue_name: str) -> None:
    tasks = 10

    async def scenario(lab: Lab) -> None:
        await lab.ready(2)
        model = lab.model
        await lab.type_task("heavy...", tasks)  # 0.6 s each: 3 s of work for two workers
        await lab.until(lambda: max(w.in_hand for w in model.workers.values()) > 2, 10, "a backlog in hand")
        await lab.key("f6")
        await lab.until(lambda: model.mode == DispatchMode(1, "manual"), 2, "the model's mode: prefetch 1")
        await lab.until(lambda: all(w.prefetch == 1 for w in model.workers.values()), 5, "both workers in prefetch 1")
        await lab.until(lambda: model.ledger.done_messages == tasks, 20, f"{tasks} tasks done")

    lab = run_lab(broker_url, queue_name, scenario)
    records = lab.ours()
    changed = {m.worker: m.ts for m in lab.events(protocol.Mode)}
    assert sorted(changed) == ["w1", "w2"]
    # Before the change: round-robin, each worker held its share of the backlog at once.
    first = {r.seq: r.deliveries[0].worker for r in records}
    assert sorted(deliveries_of(records, "w1") + deliveries_of(records, "w2")) == list(range(1, tasks + 1))
    assert all(first[n] != first[n + 1] for n in range(1, tasks)), first
    # The waiting ones came back, called by their name, and were done after all.
    # (The worker that changes first may return a task to the one that has not changed
    # yet, which returns it again: one record per give-back, told as it happened.)
    returned = [r for r in records if any(d.why == MODE_CHANGE for d in r.deliveries)]
    gave_back = [d for r in records for d in r.deliveries if d.outcome == "returned (mode-change)"]
    reported = [e for e in lab.events(protocol.Returned) if e.reason == "mode-change"]
    assert len(returned) >= 2 and len(gave_back) == len(reported), lab.describe()
    assert all(r.deliveries[0].outcome == "returned (mode-change)" for r in returned)
    assert all(r.state == DONE and r.done_count == 1 for r in records), lab.describe()
    assert not any(d.why == AFTER_CRASH for r in records for d in r.deliveries)
    # After the change (and after the task in progress then), each worker holds one at a time.
    for name, changed_at in changed.items():
        spans = [(d.ts, d.ended or float("inf")) for r in records for d in r.deliveries if d.worker == name]
        settled = max((end for start, end in spans if start < changed_at), default=changed_at)
        later = sorted(span for span in spans if span[0] >= settled)
        assert later, f"{name} got nothing after the change\n{lab.describe()}"
        overlaps = [(a, b) for a, b in itertools.pairwise(later) if b[0] < a[1]]
        assert not overlaps, f"{name} held two at once after prefetch 1: {overlaps}\n{lab.describe()}"
    # Who got what after the change: both workers shared the returned tasks.
    second = {r.deliveries[-1].worker for r in returned}
    assert second == {"w1", "w2"}, lab.describe()


def test_two_quick_mode_keys_take_two_steps(broker_url: str, queue_name: str) -> None:
    async def scenario(lab: Lab) -> None:
        await lab.ready(2)
        await lab.key("f7")
        await lab.key("f7")  # manual -> auto -> none, as fast as a double tap
        assert lab.backend.pool.mode == DispatchMode(0, "none")

    run_lab(broker_url, queue_name, scenario)


# ----- (e) quitting leaves nothing behind


def process_alive(pid: int, marker: str) -> bool:
    """True while ``pid`` is a running process whose command line mentions ``marker``.

    A zombie has ended (only its exit status is left); a pid reused by an
    unrelated process is not ours.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and marker.encode() in cmdline


def workers_on(queue: str) -> list[str]:
    """``pgrep`` lines of worker processes on ``queue``."""
    found = subprocess.run(["pgrep", "-af", "--", "-m workers"], capture_output=True, text=True, check=False)
    return [line for line in found.stdout.splitlines() if queue in line]


def test_quit_leaves_no_worker_process(broker_url: str, queue_name: str) -> None:
    pids: list[int] = []
    quit_at: list[float] = []

    async def scenario(lab: Lab) -> None:
        await lab.ready(2)
        await lab.type_task("busy.........", 4)
        await lab.until(lambda: all(w.current for w in lab.model.workers.values()), 10, "both workers busy")
        pids.extend(w.pid for w in lab.model.workers.values() if w.pid is not None)
        assert len(pids) == 2 and all(process_alive(pid, queue_name) for pid in pids)
        assert len(workers_on(queue_name)) == 2, workers_on(queue_name)
        quit_at.append(time.monotonic())
        await lab.pilot.press("ctrl+q")
        deadline = time.monotonic() + 5
        while lab.app.is_running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not lab.app.is_running, "ctrl+q did not end the app"

    lab = run_lab(broker_url, queue_name, scenario)
    elapsed = time.monotonic() - quit_at[0]
    alive = [pid for pid in pids if process_alive(pid, queue_name)]
    assert not alive, f"workers outlived the dashboard: {alive}"
    assert not workers_on(queue_name)
    # They left on the end of their stdin ("stop"), not on the SIGTERM fallback ("terminated").
    codes = {name: w.process.returncode for name, w in lab.backend.pool.processes.items()}
    assert codes == {"w1": 0, "w2": 0}, codes
    after_quit = lab.backend.inbox.drain()  # nobody folds them once the app has gone
    stopped = {e.worker: e.reason for e in lab.model.seen + after_quit if isinstance(e, protocol.Stopped)}
    assert stopped == {"w1": "stop", "w2": "stop"}, stopped
    print(f"\nctrl+q to every worker gone: {elapsed:.2f}s")
    assert elapsed < 10.0


def test_quit_while_publishing_publishes_nothing_more(broker_url: str, queue_name: str) -> None:
    """Two batches asked for, quit during the first: neither goes on once the dashboard shuts down."""

    # The most the pane takes: several seconds of publishing even with a window of confirms in flight
    # (5,000 took a minute when each confirm was waited for, and well under a second since).
    batch = MAX_COUNT

    async def scenario(lab: Lab) -> None:
        await lab.ready(2)
        await lab.type_task("quick", batch)
        lab.app.post_message(events.Key("enter", None))  # the same again at once, queued behind it
        await lab.until(lambda: lab.backend.publisher.pending > batch, 20, "two batches asked for")
        await lab.until(lambda: lab.model.ledger.confirmed >= 20, 10, "the first batch being published")
        await lab.key("ctrl+q")

    lab = run_lab(broker_url, queue_name, scenario)
    items = lab.model.seen + lab.backend.inbox.drain()
    published = [i for i in items if isinstance(i, obs.Published)]
    assert 20 <= len(published) < batch
    late = [i for i in published if i.ts > lab.shutdown_at + 0.05]
    assert not late, f"{len(late)} tasks were published after the shutdown began"


# ----- (f) auto ack: a kill loses what the worker held


def test_auto_ack_kill_loses_what_the_worker_held(broker_url: str, queue_name: str) -> None:
    tasks = 8

    async def scenario(lab: Lab) -> None:
        await lab.ready(2)
        model = lab.model
        await lab.pilot.press("f7")
        await lab.until(lambda: model.mode == DispatchMode(0, "auto"), 2, "the model's mode: auto ack")
        await lab.until(lambda: all(w.ack == "auto" for w in model.workers.values()), 5, "both in auto ack")
        await lab.type_task("slow...", tasks)  # 0.6 s each
        victim = model.workers["w1"]
        assert lab.app.selected == "w1"
        # All of its share in hand (none still in transit, which would vanish unseen), most of it waiting.
        await lab.until(lambda: victim.received == tasks // 2 and victim.in_hand >= 3, 10, "w1 holding its share")
        await lab.key("f3")
        await lab.until(lambda: victim.status == "killed", 5, "w1 killed")
        ledger = model.ledger
        # What w1 held when the SIGKILL went out, by its own events' clock.
        kill = next(e.ts for e in lab.events(obs.StopRequested) if e.worker == "w1" and e.kill)
        w1_events = [e for e in lab.events(protocol.Received) + lab.events(protocol.Done) if e.worker == "w1"]
        held = sum(1 if isinstance(e, protocol.Received) else -1 for e in w1_events if e.ts < kill)
        assert held >= 2 and ledger.lost == held, f"held {held} at the kill\n{lab.describe()}"
        # Everything w1 took and had not finished is gone: the broker forgot it at delivery.
        assert ledger.lost == victim.received - victim.done, lab.describe()
        lost = [r for r in lab.ours() if r.state == LOST]
        assert len(lost) == ledger.lost
        assert all(r.deliveries[-1].worker == "w1" and r.deliveries[-1].outcome == "killed, lost" for r in lost)
        # w2 finishes its own share and never sees w1's tasks again.
        await lab.until(
            lambda: ledger.done_messages + ledger.lost == tasks,
            15,
            "every task done or lost",
        )
        assert model.workers["w2"].redelivered == 0
        assert all(r.done_count == 0 for r in lost)
        await lab.until(lambda: model.queue.ready == 0, 5, "an empty queue")

    run_lab(broker_url, queue_name, scenario)


# ----- (g) keys answer while the workers are busy


def fill_queue(url: str, queue: str, count: int, body: bytes) -> None:
    """Publish ``count`` tasks as fast as pika can (no confirms), so the workers get a real burst."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for _ in range(count):
            channel.basic_publish(exchange="", routing_key=queue, body=body)
    finally:
        connection.close()


def test_key_press_answers_during_a_burst(broker_url: str, queue_name: str) -> None:
    burst = 2000
    timings: list[tuple[float, int]] = []

    async def scenario(lab: Lab) -> None:
        await lab.ready(2)
        model = lab.model
        fill = asyncio.create_task(asyncio.to_thread(fill_queue, broker_url, queue_name, burst, b"quick"))
        deadline = time.monotonic() + 30
        while model.ledger.done_runs < burst and time.monotonic() < deadline:
            before, done = lab.app.selected, model.ledger.done_runs
            timings.append((await lab.key("ctrl+n"), done))
            assert lab.app.selected != before, "ctrl+n did not change the selection"
            await asyncio.sleep(0.02)
        await fill
        assert sum(w.done for w in model.workers.values()) == burst, lab.describe()

    run_lab(broker_url, queue_name, scenario, seconds_per_dot=0.0)
    busy = [seconds for seconds, done in timings if 0 < done < burst]
    print(f"\nctrl+n while draining {burst} tasks, ms: " + " ".join(f"{t * 1000:.0f}" for t in busy))
    assert len(busy) >= 3, f"too few key presses landed while the workers were busy: {timings}"
    assert max(busy) < 2.0, f"a key press took {max(busy):.2f}s while the workers were busy"


def test_selected_styles_only_the_card_or_its_head_line() -> None:
    """WorkerCard.mark_selected restyles the card (a card's border) or its head (a row's line) alone, at once:
    a rule styling another part through -selected would show late, and a background on the card
    would re-draw every part beneath it."""
    css = re.sub(r"/\*.*?\*/", "", (Path(__file__).resolve().parent.parent / "tui" / "view" / "app.tcss").read_text(),
                 flags=re.S)  # fmt: skip
    rules = [(selector.strip(), body) for selector, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css)]
    with_selected = [(selector, body) for selector, body in rules if "-selected" in selector]
    assert with_selected, "app.tcss no longer styles the selected card"
    assert not any("-selected" in selector for selector in re.findall(r"([^{}]+)\{", css) if selector.strip() not in
                   dict(with_selected)), "a -selected rule nests others"  # fmt: skip
    for selector, body in with_selected:
        for part in selector.split(","):
            # Ancestors (a screen size) may come first; the subject is the card or its head, never another part.
            card, head = r"WorkerCard(\.[\w-]+)*\.-selected(\.[\w-]+|:\w+)*", r"WorkerCard > \.head\.-selected"
            assert re.fullmatch(rf"\s*([\w#.-]+\s+)*({card}|{head})\s*", part), part
            assert "background" not in body or part.strip().endswith(".head.-selected"), (
                f"{part}: the card's background"
            )


@pytest.mark.parametrize("workers", [8, 2])
def test_the_selection_shows_at_once_on_a_rows_head_line_or_a_cards_border(workers: int) -> None:
    """Eight workers at 120x36 are rows: the selected one's head line is tinted, its status bar kept; two are cards:
    the selected one has a double border. Right after the key's handler, before any redraw, and nothing else moved."""
    app, _, feed = fed_app()
    from tui.engine.pool import WorkerOutput

    def look(card: WorkerCard) -> tuple[object, ...]:
        head, row = card.query_one(".head", Static), card.query_one(".row", Static)
        return (card.styles.border_left, card.styles.border_top, card.styles.background,
                head.styles.background, row.styles.background)  # fmt: skip

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            feed.inbox.put_many([WorkerOutput("w1", data) for data in flood(10 * workers, workers=workers)])
            deadline = time.monotonic() + 10
            while len(app.view.grid.cards) < workers:
                await pilot.pause(0.05)
                assert time.monotonic() < deadline, "the workers' cards never came"
            await pilot.pause(0.3)
            cards = app.view.grid.cards
            first, second = (cards[name] for name in list(cards)[:2])
            assert app.selected == first.worker_name
            before = {name: look(card) for name, card in cards.items()}
            app.action_select(1)  # what ctrl+n does; no await: the screen is not redrawn in between
            after = {name: look(card) for name, card in cards.items()}
            assert app.selected == second.worker_name
            assert [name for name in cards if before[name] != after[name]] == [first.worker_name, second.worker_name]
            head = second.query_one(".head", Static)
            if workers > 4:  # rows: the head line carries the mark; the status bar and the card's own look stay
                assert head.display and head.styles.background.a > 0 and after[second.worker_name][:3] == before[
                    second.worker_name][:3]  # fmt: skip
                assert first.query_one(".head", Static).styles.background.a == 0
            else:  # cards: the border carries it
                assert not head.display
                assert second.styles.border_top[0] == "double" and first.styles.border_top[0] != "double"

    asyncio.run(run())


def test_a_big_read_is_folded_a_slice_at_a_time() -> None:
    """A read of thousands of lines is cut at line ends: each fold step stays short, nothing is lost."""
    from tui.engine.pacing import FOLD_SLICE
    from tui.engine.pool import WorkerOutput

    tasks = 1000
    lines = [protocol.encode_started('"w1"', 1.0 + n, n, f"m-{n}", 0.0) for n in range(1, tasks + 1)]
    feed = FeedBackend()
    feed.inbox.put_many([WorkerOutput("w1", "".join(lines).encode())])
    model = Model(queue="q")
    app = DispatchLab(LabConfig(url="amqp://guest:guest@localhost/%2F", queue="q"), model, feed)  # type: ignore[arg-type]
    steps = []
    while app.pacer.fold_slice():
        steps.append(model.events - sum(steps))
    assert sum(steps) == tasks and model.workers["w1"].current is not None
    assert model.workers["w1"].current.tag == tasks, "the last line folded last"
    assert max(steps) <= FOLD_SLICE and len(steps) == -(-tasks // FOLD_SLICE)
    assert app.pacer.unfolded == 0 and feed.inbox.undecoded == 0


def flood(tasks: int, *, workers: int) -> list[bytes]:
    """Worker output of ``tasks`` 0-second tasks (v1 lines), as the reader puts it: a thousand tasks a read."""
    return [
        "".join(
            protocol.encode_inline_task(f'"w{n % workers + 1}"', 1_000.0 + n * 1e-4, n, f"m-{n}", "quick", False, True)
            for n in range(first, first + 1000)
        ).encode()
        for first in range(1, tasks + 1, 1000)
    ]


def fed_app() -> tuple[DispatchLab, Model, FeedBackend]:
    """The app on a feed: what is put in its inbox is what its workers wrote."""
    feed = FeedBackend()
    model = Model(queue="q")
    app = DispatchLab(LabConfig(url="amqp://guest:guest@localhost/%2F", queue="q"), model, feed)  # type: ignore[arg-type]
    return app, model, feed


def test_behind_a_flood_the_figures_move_often_and_the_details_seldom() -> None:
    """While a backlog waits, the queue figures are drawn every BEHIND_DRAW_SECONDS at most, the timeline
    every DETAIL_SECONDS at most; once the backlog is folded both show it all."""
    from tui.engine.pacing import BEHIND_DRAW_SECONDS, DETAIL_SECONDS
    from tui.engine.pool import WorkerOutput
    from tui.view.widgets.queue_panel import QueuePanel
    from tui.view.widgets.timeline_view import TimelineView

    tasks = 40_000
    reads = flood(tasks, workers=1)
    app, model, feed = fed_app()
    draws: dict[str, list[tuple[float, bool]]] = {"figures": [], "timeline": []}
    figures_show, timeline_show = QueuePanel.show, TimelineView.show

    def on_figures(panel: QueuePanel, m: Model, now: float, durable: bool, *, details: bool = True) -> None:
        draws["figures"].append((time.monotonic(), bool(app.pacer.backlog)))
        figures_show(panel, m, now, durable, details=details)

    def on_timeline(view: TimelineView, m: Model, now: float) -> None:
        draws["timeline"].append((time.monotonic(), bool(app.pacer.backlog)))
        timeline_show(view, m, now)

    async def run() -> None:
        async with app.run_test(size=(120, 36)):
            await asyncio.sleep(0.3)
            feed.inbox.put_many([WorkerOutput("w1", data) for data in reads])
            deadline = time.monotonic() + 60
            while app.pacer.unfolded or model.ledger.done_messages + model.workers["w1"].done < tasks:
                await asyncio.sleep(0.05)
                assert time.monotonic() < deadline, "the backlog was never folded"
            await asyncio.sleep(0.5)

    QueuePanel.show = on_figures  # type: ignore[method-assign]
    TimelineView.show = on_timeline  # type: ignore[method-assign]
    try:
        asyncio.run(run())
    finally:
        QueuePanel.show, TimelineView.show = figures_show, timeline_show  # type: ignore[method-assign]
    assert model.workers["w1"].done == tasks
    behind = {part: [t for t, waiting in shown if waiting] for part, shown in draws.items()}
    assert len(behind["figures"]) >= 2, "the figures stood still while the backlog was folded"
    for part, least in (("figures", BEHIND_DRAW_SECONDS), ("timeline", DETAIL_SECONDS)):
        # The pacer times its draws from each tick's start; a slice that ran long on a busy core delays one draw
        # and shortens the gap after it. So the rate is checked, not each gap: no more draws than the interval
        # allows over the time they spread across, give or take one.
        shown = behind[part]
        gaps = [b - a for a, b in itertools.pairwise(shown)]
        if len(shown) >= 2:
            allowed = (shown[-1] - shown[0]) / least + 1
            assert len(shown) - 1 <= allowed, (part, gaps)
    assert draws["timeline"][-1][1] is False, "the timeline was not drawn once the backlog was folded"


def test_after_a_key_press_nothing_is_folded_or_drawn_until_the_screen_shows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behind a flood, a key's screen update waits for no fold slice and no further part of the view."""
    from tui.engine import pacing
    from tui.engine.pool import WorkerOutput

    monkeypatch.setattr(pacing, "INPUT_WAIT", 30.0)  # only the screen update may end the wait
    tasks = 20_000
    reads = flood(tasks, workers=2)
    app, _, feed = fed_app()
    trace: list[str] = []
    fold_slice, select = app.pacer.fold_slice, app.view.select
    card_show = WorkerCard.show

    def on_fold(*, refill: bool = True) -> bool:
        folded = fold_slice(refill=refill)
        if folded:
            trace.append("fold")
        return folded

    def on_select(name: str | None) -> None:
        trace.append("key")
        select(name)

    def on_card(card: WorkerCard, worker: Any, now: float, *, details: bool = True) -> None:
        trace.append("draw")
        card_show(card, worker, now, details=details)

    async def run() -> None:
        async with app.run_test(size=SIZE):
            feed.inbox.put_many([WorkerOutput("w1", read) for read in reads[:2]])
            while len(app.view.grid.cards) < 2:
                await asyncio.sleep(0.02)
            feed.inbox.put_many([WorkerOutput("w1", read) for read in reads[2:]])
            presses = 0
            deadline = time.monotonic() + 60
            while app.pacer.unfolded and presses < 10:
                app.post_message(events.Key("ctrl+n", None))  # as the terminal driver posts it
                presses += 1
                await asyncio.sleep(0.03)  # several presses land while the backlog is folded, however fast it goes
                assert time.monotonic() < deadline

    app.pacer.fold_slice = on_fold  # type: ignore[method-assign]
    app.view.select = on_select  # type: ignore[method-assign]
    call_after_each_screen_update(app, lambda: trace.append("screen"))
    WorkerCard.show = on_card  # type: ignore[method-assign]
    try:
        asyncio.run(run())
    finally:
        WorkerCard.show = card_show  # type: ignore[method-assign]
    answered = [i for i, step in enumerate(trace) if step == "key" and "fold" in trace[i:]]
    assert len(answered) >= 3, f"too few presses while the backlog was folded: {trace.count('key')}"
    for i in answered:
        until_shown = trace[i + 1 : trace.index("screen", i)]
        assert "fold" not in until_shown and "draw" not in until_shown, trace[i : i + 8]


def test_textual_still_hands_each_screen_update_to_app_display() -> None:
    """tui.view.screen_updates hooks a private method of Textual's App: this fails if Textual renames or skips it."""
    from textual.app import App

    assert callable(getattr(App, "_display", None)), "Textual's App has no _display any more"
    app, _, _ = fed_app()
    updates: list[float] = []
    call_after_each_screen_update(app, lambda: updates.append(time.monotonic()))

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.2)
            before = len(updates)
            await pilot.press("ctrl+n")
            deadline = time.monotonic() + 5.0  # a busy machine may take a while to draw; none in 5 s is a miss
            while len(updates) == before and time.monotonic() < deadline:
                await pilot.pause(0.05)
            assert len(updates) > before, "a key press changed the screen, and no update was handed over"

    asyncio.run(run())
    assert updates, "no screen update reached the hook"
