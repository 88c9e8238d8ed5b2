"""Provides the dashboard's benchmark figures: model throughput, dashboard lag, key latency, memory.

The app runs headless (Textual's ``run_test``) with real workers on the bench
queue. "The screen shows" a change at the end of the first screen update the
app hands to its driver after the change was made (tui.view.screen_updates):
a value set on a widget is not on screen before that. The machine is noisy and
shared, so latencies come with an idle reference measured in the same run.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# isort: off
# tui before Textual: tui/__init__.py sets the dashboard's frame rate (TEXTUAL_FPS), which Textual reads
# when it is first imported. Imported after Textual, the app measured here ran at Textual's 60 frames,
# not the 120 that `python -m tui` runs at.
import tui  # noqa: F401
from textual import events

# isort: on

from benchmarks.figures import Bench, Figure, Target
from tui.engine.backend import Backend, FeedBackend, LabConfig, build_pipeline
from tui.engine.pacing import tune_process
from tui.engine.pool import Arrival, Inbox, WorkerOutput
from tui.model import observations as obs
from tui.model.state import Model
from tui.view.app import DispatchLab
from tui.view.screen_updates import call_after_each_screen_update
from tui.view.widgets.queue_panel import QueuePanel
from workers import protocol
from workers.settings import AckMode, DispatchMode

SIZES = {"full": (1_000_000, 20_000, 1_000_000, 60), "quick": (100_000, 4_000, 100_000, 20),
         "smoke": (20_000, 300, 20_000, 3)}  # fmt: skip
"""Per profile: model events, drained tasks, messages through the ledger for memory, key presses."""


def _sizes(bench: Bench) -> tuple[int, int, int, int]:
    return SIZES.get(bench.params.profile, SIZES["quick"])


SCALE_TASKS = {"full": 100_000, "quick": 10_000, "smoke": 300}
"""Per profile: the flood demo's backlog for the 8- and 16-worker figures."""
SCALE_LAG = ((8, 0.5), (16, 1.0))
"""The flood demo's lag figures: workers, target p95 in seconds."""
SCALE_KEY_WORKERS = 8
SCALE_KEY_TARGET = 0.05
"""Seconds: the key latency p95 target while 8 workers drain the flood demo's backlog."""


def _scale_tasks(bench: Bench) -> int:
    return SCALE_TASKS.get(bench.params.profile, SCALE_TASKS["quick"])


def synthetic_session(
    messages: int, *, first: int = 0, workers: int = 4, prefix: str = "ab12"
) -> list[obs.Observation]:
    """Tasks ``first+1 .. first+messages`` as the model sees zero-second tasks: 5 observations each."""
    items: list[obs.Observation] = []
    ts = 1_000_000.0 + first * 0.0002
    names = [f"w{n + 1}" for n in range(workers)]
    for i in range(first, first + messages):
        worker, msg_id = names[i % workers], f"{prefix}-{i + 1}"
        items += [
            obs.Published(msg_id, ts, "quick task"),
            obs.Confirmed(msg_id, ts),
            protocol.Received(worker, ts, i + 1, msg_id, "quick task", False),
            protocol.Started(worker, ts, i + 1, msg_id, 0.0),
            protocol.Done(worker, ts, i + 1, msg_id, True),
        ]
        ts += 0.0002
    return items


def model_throughput(bench: Bench) -> list[Figure]:
    """Fold a recorded stream into a fresh model; best of three, in events per second."""
    events_wanted = _sizes(bench)[0]
    items = synthetic_session(events_wanted // 5)
    rates = []
    for _ in range(3):
        model = Model(prefix="ab12")
        gc.collect()
        began = time.perf_counter()
        model.apply_all(items)
        rates.append(len(items) / (time.perf_counter() - began))
        bench.log(f"  model: {rates[-1]:,.0f} events/s")
    target = 200_000.0
    best = max(rates)
    return [
        Figure(
            key="model_throughput",
            what=f"model throughput: {len(items):,} recorded events folded into tui.model.state.Model "
            f"(best of 3) vs the 200,000 ev/s target",
            unit="ev/s",
            ours=best,
            reference=target,
            ratio=best / target,
            target=Target(">=", 1.0),
            samples={"ours": rates},
        )
    ]


@dataclass
class Screen:
    """What the queue panel showed, and when."""

    shown: list[tuple[float, int]] = field(default_factory=list)


def record_screen(screen: Screen) -> Callable[[], None]:
    """Wrap QueuePanel.show so each render records (time, done figure on screen); returns the undo."""
    original = QueuePanel.show

    def show(self: QueuePanel, model: Model, now: float, durable: bool, *, details: bool = True) -> None:
        original(self, model, now, durable, details=details)
        screen.shown.append((time.time(), model.ledger.done_messages))

    QueuePanel.show = show  # type: ignore[method-assign]

    def undo() -> None:
        QueuePanel.show = original  # type: ignore[method-assign]

    return undo


def record_displays(app: DispatchLab) -> list[float]:
    """Note the time.time() of each screen update the app hands to its driver.

    That is when the screen shows what widgets changed before it: a value set on a
    widget is not on screen until the next update is drawn.
    """
    displays: list[float] = []
    call_after_each_screen_update(app, lambda: displays.append(time.time()))
    return displays


def painted_at(displays: list[float], after: float) -> float | None:
    """The end of the first screen update that ended after ``after`` (time.time())."""
    for shown in displays:
        if shown >= after:
            return shown
    return None


class TappedInbox(Inbox):
    """The pool's inbox, keeping a copy of what the workers wrote: the truth the screen trails.

    Only a reference is kept while the app runs (decoding here would load the process
    being measured); ``done_ts`` decodes it afterwards.
    """

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[WorkerOutput] = []

    def put_many(self, items: Sequence[Arrival]) -> None:
        self.outputs.extend(item for item in items if type(item) is WorkerOutput)
        super().put_many(items)

    def done_ts(self) -> list[float]:
        """When each worker ``done`` happened, by the worker's clock."""
        tapped = Inbox()
        tapped.put_many(self.outputs)
        return [item.ts for item in tapped.drain() if type(item) is protocol.Done]


def lab(bench: Bench, workers: int, prefetch: int) -> tuple[DispatchLab, Backend, TappedInbox]:
    config = LabConfig(url=bench.url, queue=bench.control.queue, workers=workers,
                       mode=DispatchMode(prefetch, AckMode.MANUAL), seconds_per_dot=0.0)  # fmt: skip
    inbox = TappedInbox()
    backend = Backend(config, pipeline=build_pipeline(config, inbox=inbox))
    model = Model(queue=config.queue, mode=config.mode, prefix=backend.prefix)
    tune_process()  # as the dashboard's process does where it starts
    return DispatchLab(config, model, backend), backend, inbox


def p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def dashboard_lag(bench: Bench) -> list[Figure]:
    """4 workers drain a pre-published backlog at prefetch 50 while the app runs headless."""
    return [_lag(bench, "dashboard_lag", 4, _sizes(bench)[1], 0.5)]


def dashboard_lag_scale(bench: Bench) -> list[Figure]:
    """The flood demo: 8, then 16 workers drain 100,000 tasks (a full run) while the app runs headless."""
    tasks = _scale_tasks(bench)
    return [_lag(bench, f"dashboard_lag_{workers}", workers, tasks, target) for workers, target in SCALE_LAG]


def _lag(bench: Bench, key: str, workers: int, tasks: int, target: float) -> Figure:
    """``workers`` drain ``tasks`` pre-published 0-dot tasks at prefetch 50; p95 of the screen's lag vs ``target`` s."""
    bench.log(f"dashboard lag: {workers} workers, {tasks:,} tasks")
    bench.control.prepare(tasks, timeout=60 + tasks / 1_000)  # the backlog is there before the workers start
    app, backend, inbox = lab(bench, workers, 50)
    lag = follow(app, backend, inbox, tasks)
    bench.log(f"  lag: p95 {lag.p95:.3f} s, final {lag.final:.3f} s, {len(lag.ages)} samples")
    return Figure(
        key=key,
        what=f"dashboard lag: {workers} workers drain {tasks:,} 0-dot tasks at prefetch 50, app headless; "
        f"{lag.describe()} (ratio vs the {target:g} s target)",
        unit="s",
        ours=lag.p95,
        reference=target,
        ratio=lag.p95 / target,
        target=Target("<=", 1.0),
        samples={"ages": lag.ages[:2000], "final": [lag.final]},
    )


@dataclass(frozen=True)
class Lag:
    """How far the screen's done figure trailed the workers' done events over one run."""

    ages: list[float]
    """At each sample: how long ago the oldest done not yet on screen happened (0 when none)."""
    behind: list[int]
    """At each sample: how many dones the screen did not show yet."""
    final: float
    """Seconds from the last done to the screen update that showed the full count."""

    @property
    def p95(self) -> float:
        return p95(self.ages)

    def describe(self) -> str:
        return (
            f"p95 over {len(self.ages)} samples every {LAG_SAMPLE * 1000:.0f} ms, from the first done until the "
            "screen showed them all, of how long the screen had been behind the workers' done count; after the "
            f"last done the screen showed the full count in {self.final:.2f} s; p95 tasks behind "
            f"{p95([float(b) for b in self.behind]):.0f}"
        )


def follow(
    app: DispatchLab,
    backend: Backend,
    inbox: TappedInbox,
    tasks: int,
    *,
    during: Callable[[], Awaitable[None]] | None = None,
    after: Callable[[], Awaitable[None]] | None = None,
) -> Lag:
    """Run the app headless until its screen shows ``tasks`` done; the lag of its figures behind the workers'.

    ``during`` is awaited once the app runs (to start workers it does not own), ``after``
    once the screen showed them all, before the app ends.
    """
    screen = Screen()
    undo = record_screen(screen)
    displays = record_displays(app)
    final_lag: list[float] = []

    async def run() -> None:
        async with app.run_test(size=(120, 36)):
            if during is not None:
                await during()
            deadline = time.monotonic() + 120 + tasks / 200
            while not (screen.shown and screen.shown[-1][1] >= tasks and painted_at(displays, screen.shown[-1][0])):
                await asyncio.sleep(0.02)  # pilot.pause would force a screen update each time
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the screen reached only {screen.shown[-1][1] if screen.shown else 0}")
            painted = painted_at(displays, screen.shown[-1][0])
            assert painted is not None
            final_lag.append(painted - max(inbox.done_ts()))
            if after is not None:
                await after()

    try:
        asyncio.run(run())
    finally:
        undo()
        backend.shutdown()
    done = sorted(inbox.done_ts())
    # What the screen showed, and from when: each panel update counts from the screen update that drew it.
    painted_counts = sorted(
        (painted, count) for at, count in screen.shown if (painted := painted_at(displays, at)) is not None
    )
    ages, behind = sampled_lag(done, painted_counts, final_lag[0])
    return Lag(ages, behind, final_lag[0])


LAG_SAMPLE = 0.02
"""Seconds between two samples of the screen's lag."""


def sampled_lag(
    done: list[float], painted_counts: list[tuple[float, int]], final: float
) -> tuple[list[float], list[int]]:
    """At each sample time: how long ago the oldest done not yet on screen happened (0 when none), and how many.

    ``done`` is every task's done time, sorted; ``painted_counts`` (time, count) what the screen
    showed from when on. Samples run from the first done to the moment the screen showed them all.
    """
    ages: list[float] = []
    behind: list[int] = []
    if not done:
        return ages, behind
    t, end = done[0], done[-1] + final
    shown, index, true = 0, 0, 0
    while t <= end:
        while index < len(painted_counts) and painted_counts[index][0] <= t:
            shown = max(shown, painted_counts[index][1])
            index += 1
        while true < len(done) and done[true] <= t:
            true += 1
        ages.append(t - done[shown] if shown < true else 0.0)
        behind.append(max(0, true - shown))
        t += LAG_SAMPLE
    return ages, behind


def _start_filler(bench: Bench, count: int) -> subprocess.Popen[bytes]:
    """The load's publisher, in a session of its own as from another terminal (``dispatch-lab new-task`` there).

    In the benchmark's own session it shared the dashboard's scheduling group (Linux autogroup),
    as no publisher a user starts does: key_latency_8 p95 was 20-56 ms that way, 19-41 ms this way.
    """
    code = "import sys; from benchmarks.filler import fill; fill(sys.argv[1], sys.argv[2], int(sys.argv[3]))"
    env = {**os.environ, **bench.env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.Popen(  # the URL in argv is the bench's own guest URL on loopback, never a secret
        [sys.executable, "-c", code, bench.url, bench.control.queue, str(count)], env=env, start_new_session=True
    )


NEVER = 5.0
"""Seconds counted for a press the screen never showed, or showed without the card marked."""


def _press_latencies(app: DispatchLab, presses: int) -> Any:
    """Each press: from posting the key to the end of the first screen update after the selection moved.

    Nothing polls: the selection handler and the display hook resolve a future, so the
    measuring adds no work to the event loop it measures.
    """
    state: dict[str, Any] = {}
    original_select = app.view.select

    def select(name: str | None) -> None:
        original_select(name)
        if "shown" in state and "marked" not in state:
            state["marked"] = _card_selected(app)  # the handler ran: the card must carry the class now

    def displayed() -> None:
        shown = state.get("shown")
        if "marked" in state and shown is not None and not shown.done():
            shown.set_result(time.perf_counter() if state["marked"] else None)

    app.view.select = select  # type: ignore[method-assign]
    call_after_each_screen_update(app, displayed)

    async def measure(pilot: Any) -> list[float]:
        latencies = []
        for _ in range(presses):
            state.clear()
            state["shown"] = shown = asyncio.get_running_loop().create_future()
            began = time.perf_counter()
            # Posted as the terminal driver posts it: pilot.press waits for the app to go idle first.
            app.post_message(events.Key("ctrl+n", None))
            try:
                painted = await asyncio.wait_for(shown, NEVER)
            except asyncio.TimeoutError:
                painted = None
            latencies.append(NEVER if painted is None else painted - began)
            state.clear()
            await asyncio.sleep(0.05)
        return latencies

    return measure


def _card_selected(app: DispatchLab) -> bool:
    """The screen shows the selection once the chosen card carries the -selected class.

    The card is looked up, not queried: this runs inside the press it measures, and a query of
    the whole screen was a sixth of a press's time on the UI thread.
    """
    card = app.view.grid.cards.get(app.selected) if app.selected is not None else None
    return card is not None and card.has_class("-selected")


def key_latency(bench: Bench) -> list[Figure]:
    """ctrl+n (select next worker) to the card showing it: under a full-speed drain vs idle."""
    tasks, presses = _sizes(bench)[1], _sizes(bench)[3]
    return [_key_latency(bench, "key_latency", 4, tasks * 10, tasks // 4, presses, 0.1)]


def key_latency_scale(bench: Bench) -> list[Figure]:
    """The flood demo: ctrl+n while 8 workers drain 100,000 tasks (a full run) that another process publishes."""
    presses = _sizes(bench)[3]
    # The filler stops after the presses: a quick run's 30 take as long as a full backlog lasts.
    tasks = _scale_tasks(bench) if bench.params.profile == "smoke" else SCALE_TASKS["full"]
    figure = _key_latency(bench, f"key_latency_{SCALE_KEY_WORKERS}", SCALE_KEY_WORKERS, tasks, tasks // 10,
                          presses, SCALE_KEY_TARGET)  # fmt: skip
    return [figure]


def _key_latency(
    bench: Bench, key: str, workers: int, load: int, under_way: int, presses: int, target: float
) -> Figure:
    """Presses idle, then while ``workers`` drain ``load`` tasks, once ``under_way`` are done; p95 vs ``target`` s."""
    bench.log(f"key latency: {workers} workers, {load:,} tasks published meanwhile")
    bench.control.prepare(0)
    app, backend, _ = lab(bench, workers, 50)
    press = _press_latencies(app, presses)
    loaded: list[float] = []
    idle: list[float] = []

    async def run() -> None:
        async with app.run_test(size=(120, 36)) as pilot:
            deadline = time.monotonic() + 60
            while sum(1 for w in app.model.workers.values() if w.status == "idle") < workers:
                await asyncio.sleep(0.05)
                if time.monotonic() > deadline:
                    raise RuntimeError("workers did not start")
            idle.extend(await press(pilot))
            # The load comes from another process, as it would: a publisher in this one would
            # compete for this process's GIL and measure itself.
            filler = _start_filler(bench, load)  # killed after the presses if it has not ended
            try:
                deadline = time.monotonic() + 60
                while app.model.ledger.done_messages < under_way:  # the drain is under way
                    await asyncio.sleep(0.05)
                    if time.monotonic() > deadline or filler.poll() not in (None, 0):
                        raise RuntimeError(f"no load: the filler exited with {filler.poll()}")
                loaded.extend(await press(pilot))
                if filler.poll() is not None and app.model.ledger.done_messages >= load:
                    bench.log("  warning: the load ended before the last key press; p95 under load is understated")
            finally:
                filler.kill()  # the presses are measured: the rest of the load is not needed
                filler.wait(timeout=10)

    try:
        asyncio.run(run())
    finally:
        backend.shutdown()
    ours, reference = p95(loaded), p95(idle)
    bench.log(f"  key latency p95: {ours * 1000:.0f} ms loaded, {reference * 1000:.0f} ms idle")
    return Figure(
        key=key,
        what=f"key latency: ctrl+n to the screen update that shows the selected card, p95 of {presses} "
        f"presses while {workers} workers drain at full speed what another process publishes (up to {load:,} tasks; "
        "ours) vs idle (reference); "
        f"target p95 < {target * 1000:.0f} ms",
        unit="s",
        ours=ours,
        reference=reference,
        ratio=ours / target,
        target=Target("<=", 1.0),
        samples={"loaded": loaded, "idle": idle},
        note=f"ratio is against the {target * 1000:.0f} ms target",
    )


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory(bench: Bench) -> list[Figure]:
    """App RSS after N messages through the ledger (headless app, rendering as it goes) minus at start."""
    messages = _sizes(bench)[2]
    config = LabConfig(url="amqp://guest:guest@localhost/%2F", queue="bench-memory", workers=4)
    feed = FeedBackend()
    model = Model(queue=config.queue, prefix="ab12")
    tune_process()
    app = DispatchLab(config, model, feed)  # type: ignore[arg-type]
    figures: dict[str, float] = {}

    async def run() -> None:
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.pause(0.3)
            gc.collect()
            figures["start"] = _rss_mib()
            chunk = 20_000
            for first in range(0, messages, chunk):
                feed.inbox.put_many(synthetic_session(min(chunk, messages - first), first=first))
                while app.pacer.unfolded:
                    await asyncio.sleep(0.02)
            await pilot.pause(0.3)
            gc.collect()
            figures["end"] = _rss_mib()

    asyncio.run(run())
    growth = figures["end"] - figures["start"]
    bench.log(f"  memory: {figures['start']:.0f} MiB at start, {figures['end']:.0f} MiB after {messages:,} messages")
    return [
        Figure(
            key="memory",
            what=f"memory: headless app RSS growth after {messages:,} messages through the ledger "
            f"({figures['start']:.0f} -> {figures['end']:.0f} MiB; ledger keeps {model.ledger.cap:,}, "
            f"evicted {model.ledger.evicted:,}) vs the 100 MB target",
            unit="MiB",
            ours=growth,
            reference=100.0,
            ratio=growth / 100.0,
            target=Target("<=", 1.0),
        )
    ]


__all__ = [
    "dashboard_lag",
    "dashboard_lag_scale",
    "key_latency",
    "key_latency_scale",
    "memory",
    "model_throughput",
]
