"""Provides the class figures (issue 17): a class of reporting workers followed by a ``--workers 0`` dashboard,
and what ``--report`` costs each worker.

The students' workers are real ``workers.worker`` processes on this machine, named
as if each ran on a lab machine of its own (``lab-pc01`` ...), run as a student
types it: prefetch 1 (the worker's default), manual ack, the tutorial's lines on
stdout (to /dev/null here). On 2 cores, 50 of them saturate the machine, so the
cost figure reports CPU per message beside msg/s: on a saturated machine msg/s
says as much about the scheduler as about the worker.
"""

from __future__ import annotations

import asyncio
import functools
import os
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.children import BenchError, Class, broker_pid, cpu_seconds, thread_cpu_seconds
from benchmarks.dashboard import TappedInbox, follow, lab
from benchmarks.figures import Bench, Figure, Run, Target, alternate, compared

PREFETCH = 1
"""What a student's ``dispatch-lab worker --report`` runs with: the worker's default."""
LAG_TARGET = 0.5
"""Seconds: the screen's lag p95 the class figure is held to."""
COST_TARGET = 0.90
REPORT = ("--report",)
"""What a student runs (README, "Teaching a class")."""
CONTROL = ("--report", "--accept-control")
"""What a student runs to let the teacher's screen stop the worker and change its modes."""
"""A reporting worker's msg/s against the same worker's without ``--report``: a cost under 10 %."""


@dataclass(frozen=True)
class ClassSize:
    students: int
    lag_tasks: int
    """The backlog the followed class drains."""
    idle: float
    """Seconds the class stays idle after it, to measure what idle workers report."""
    cost_tasks: int
    """The backlog of each cost run: enough for the start-up of every worker and the window."""
    window: float
    """Seconds of each cost run measured, once every worker consumes."""
    pairs: int
    settle: float = 1.0
    """Seconds between the broker counting every consumer and the window: the last ones' first deliveries."""


SIZES = {
    "full": ClassSize(50, lag_tasks=100_000, idle=3.0, cost_tasks=120_000, window=10.0, pairs=3),
    "quick": ClassSize(20, lag_tasks=6_000, idle=1.0, cost_tasks=30_000, window=1.5, pairs=1, settle=0.3),
    "smoke": ClassSize(3, lag_tasks=300, idle=0.3, cost_tasks=6_000, window=0.3, pairs=1, settle=0.1),
}
STUDENTS_NICE = 19
"""The class figure runs its workers at this niceness: as if on machines of their own.

At nice 0, 50 busy workers hold 50 of the 53 or so runnable threads' fair shares of 2
cores, and the dashboard's UI and feed threads get about 2/53 of them each: measured,
the screen fell 23.5 s behind (p95) while its threads used 82 µs of CPU per task. In a
class the workers run on the students' machines and take none of the teacher's CPU.
"""


def _size(bench: Bench) -> ClassSize:
    return SIZES.get(bench.params.profile, SIZES["quick"])


def _dashboard_cpu(broker: int | None, feed_thread: int | None) -> dict[str, float]:
    """CPU seconds so far of the broker's VM, this process, its UI thread (this one) and the report feed's thread."""
    figures: dict[str, float] = {}
    for label, seconds in (
        ("broker", None if broker is None else cpu_seconds(broker)),
        ("dashboard", cpu_seconds(os.getpid())),
        ("ui", thread_cpu_seconds(threading.get_native_id())),
        ("feed", None if feed_thread is None else thread_cpu_seconds(feed_thread)),
    ):
        if seconds is not None:
            figures[label] = seconds
    return figures


def _per_task(before: dict[str, float], after: dict[str, float], tasks: int) -> dict[str, float]:
    """µs of CPU per task of each process or thread measured at both ends."""
    return {k: (after[k] - before[k]) / tasks * 1e6 for k in after if k in before}


@dataclass
class _Followed:
    """What the class figure gathers while the app runs."""

    broker: int | None
    group: Class | None = None
    feed_thread: int | None = None
    cpu_start: dict[str, float] = field(default_factory=dict)
    cpu_end: dict[str, float] = field(default_factory=dict)
    busy_reports: int = 0
    busy_bytes: int = 0
    idle_reports: float = 0.0
    idle_bytes: float = 0.0


def class_lag(bench: Bench) -> list[Figure]:
    """A class of reporting workers drains a backlog; a dashboard with ``--workers 0`` follows them headless."""
    size = _size(bench)
    students, tasks = size.students, size.lag_tasks
    bench.log(f"class lag: {students} reporting workers, {tasks:,} tasks, dashboard --workers 0")
    bench.control.prepare(tasks, timeout=60 + tasks / 1_000)
    app, backend, inbox = lab(bench, 0, PREFETCH)
    remote, feed = backend.remote, backend.feed
    assert remote is not None and feed is not None, "the lab hears reports"
    seen = _Followed(broker_pid())

    async def start_class() -> None:
        # Reports sent before the feed's queue is bound go nowhere: the class starts after it.
        deadline = time.monotonic() + 30
        while not feed.bound.is_set():
            await asyncio.sleep(0.02)
            if time.monotonic() > deadline:
                raise BenchError("the dashboard's report feed did not bind within 30 s")
        seen.feed_thread = feed.native_id
        seen.cpu_start = _dashboard_cpu(seen.broker, seen.feed_thread)
        # Started off the UI thread: 50 fork/execs there would stall the screen being measured.
        seen.group = await asyncio.to_thread(
            Class, students, bench.control.queue, PREFETCH, bench.env, flags=REPORT, nice=STUDENTS_NICE
        )

    async def measure_idle() -> None:
        seen.cpu_end = _dashboard_cpu(seen.broker, seen.feed_thread)
        seen.busy_reports, seen.busy_bytes = remote.reports, _bytes(inbox)
        began = time.monotonic()
        await asyncio.sleep(size.idle)
        assert seen.group is not None
        seen.group.check_alive()
        elapsed = time.monotonic() - began
        seen.idle_reports = (remote.reports - seen.busy_reports) / elapsed / students
        seen.idle_bytes = (_bytes(inbox) - seen.busy_bytes) / elapsed / students

    try:
        lag = follow(app, backend, inbox, tasks, during=start_class, after=measure_idle)
    finally:
        if seen.group is not None:
            seen.group.stop()
    done = sorted(inbox.done_ts())
    span = done[-1] - done[0] if len(done) > 1 else 0.0
    per_task = _per_task(seen.cpu_start, seen.cpu_end, tasks)
    rate = tasks / span if span else 0.0
    busy_reports = seen.busy_reports / span / students if span else 0.0
    busy_bytes = seen.busy_bytes / span / students if span else 0.0
    note = (
        f"{rate:,.0f} tasks/s in all; per worker while busy {busy_reports:.1f} reports/s, {busy_bytes:,.0f} B/s; "
        f"idle {seen.idle_reports:.2f} reports/s, {seen.idle_bytes:,.0f} B/s; CPU µs per task: "
        + ", ".join(f"{k} {v:,.0f}" for k, v in per_task.items())
    )
    bench.log(f"  lag: p95 {lag.p95:.3f} s, final {lag.final:.3f} s; {note}")
    return [
        Figure(
            key=f"class_lag_{students}",
            what=f"class lag: {students} `worker --report` processes (lab-pc01..., prefetch {PREFETCH}, manual ack, "
            f"nice {STUDENTS_NICE}: as if on other machines) "
            f"drain {tasks:,} 0-dot tasks; a dashboard with --workers 0 follows them through the events exchange, "
            f"headless at 120x36; {lag.describe()} (ratio vs the {LAG_TARGET:g} s target)",
            unit="s",
            ours=lag.p95,
            reference=LAG_TARGET,
            ratio=lag.p95 / LAG_TARGET,
            target=Target("<=", 1.0),
            samples={
                "ages": lag.ages[:2000],
                "final": [lag.final],
                "tasks_per_s": [rate],
                "busy_reports_per_worker_s": [busy_reports],
                "busy_bytes_per_worker_s": [busy_bytes],
                "idle_reports_per_worker_s": [seen.idle_reports],
                "idle_bytes_per_worker_s": [seen.idle_bytes],
                **{f"{k}_cpu_us_per_task": [v] for k, v in per_task.items()},
            },
            note=note,
        )
    ]


def _bytes(inbox: TappedInbox) -> int:
    return sum(len(output.data) for output in inbox.outputs)


@dataclass
class _CostRun:
    run: Run
    broker_us: float | None


def _class_drain(bench: Bench, size: ClassSize, flags: Sequence[str]) -> _CostRun:
    """A class (with ``flags`` or without) on a backlog; per-worker msg/s and CPU per message over the window.

    The window opens once the broker counts every worker as a consumer (and ``settle`` more):
    start-up is not measured. Messages are what left the queue's ready count meanwhile,
    as the broker counted them (at most one in flight per worker at prefetch 1).
    """
    control = bench.control
    control.prepare(size.cost_tasks, timeout=60 + size.cost_tasks / 1_000)
    group = Class(size.students, control.queue, PREFETCH, bench.env, flags=flags)
    broker = broker_pid()
    try:
        deadline = time.monotonic() + 60 + size.students
        while control.figures()[1] < size.students:
            group.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{size.students} workers did not all consume within {deadline:.0f} s")
            control.connection.sleep(0.1)
        control.connection.sleep(size.settle)
        ready0, began = control.figures()[0], time.monotonic()
        cpu0, broker0 = group.cpu_seconds(), None if broker is None else cpu_seconds(broker)
        control.connection.sleep(size.window)
        ready1, ended = control.figures()[0], time.monotonic()
        cpu1, broker1 = group.cpu_seconds(), None if broker is None else cpu_seconds(broker)
        group.check_alive()
    finally:
        group.stop()
    taken = ready0 - ready1
    if ready1 == 0 or taken <= 0:
        raise BenchError(f"the backlog of {size.cost_tasks:,} ran out before the window ended: make it bigger")
    broker_us = None if broker0 is None or broker1 is None else (broker1 - broker0) / taken * 1e6
    return _CostRun(Run(taken / (ended - began) / size.students, (cpu1 - cpu0) / taken * 1e6), broker_us)


ALONE = {
    "full": ClassSize(1, lag_tasks=0, idle=0.0, cost_tasks=40_000, window=5.0, pairs=3),
}
"""Per profile: one worker alone, as on a student's own machine (the full profile only: a quick run stays under a
minute)."""


def report_cost(bench: Bench) -> list[Figure]:
    """What ``--report`` costs: a class of 50 on this machine's 2 cores, and one worker alone, as on its own machine.

    And for the class, what ``--report --accept-control`` costs (a thread and a connection more). A quick run
    measures neither that nor the one worker alone, to stay under a minute.
    """
    size = _size(bench)
    figures = _report_cost(bench, size, REPORT)
    if size.students > 1 and bench.params.profile != "quick":  # a quick run stays under a minute
        figures += _report_cost(bench, size, CONTROL)
    alone = ALONE.get(bench.params.profile)
    if alone is not None:
        figures += _report_cost(bench, alone, REPORT)
    return figures


def _report_cost(bench: Bench, size: ClassSize, flags: Sequence[str]) -> list[Figure]:
    """The same class with ``flags`` and without, alternating: msg/s per worker and CPU per message."""
    shown = " ".join(flags)
    bench.log(f"report cost: {size.students} workers with {shown} vs without, {size.window:g} s windows")
    brokers: dict[bool, list[float]] = {True: [], False: []}

    def side(report: bool) -> Run:
        result = _class_drain(bench, size, flags if report else ())
        if result.broker_us is not None:
            brokers[report].append(result.broker_us)
        broker = "" if result.broker_us is None else f", broker {result.broker_us:,.0f} µs/msg"
        label = f"with {shown}" if report else "without"
        bench.log(f"  {label}: {result.run.value:,.1f} msg/s per worker, {result.run.cpu_us:,.0f} µs CPU/msg{broker}")
        return result.run

    stem = "control" if "--accept-control" in flags else "report"
    ours, reference = alternate(size.pairs, functools.partial(side, True), functools.partial(side, False))
    alone = "1 `worker` process alone, as on a machine of its own (lab-pc01"
    who = f"{size.students} `worker` processes on 2 cores (lab-pc01..." if size.students > 1 else alone
    what = (
        f"{who}, prefetch {PREFETCH}, manual ack, tutorial lines to "
        f"/dev/null) with {shown} (ours; no dashboard listening) vs the same without (reference), {size.pairs} "
        f"alternating pairs, {size.window:g} s windows once all consume"
    )
    throughput = compared(
        f"{stem}_cost_{size.students}",
        f"reporting cost, throughput: {what}; msg/s per worker (the broker's ready count over the window / workers)",
        "msg/s",
        Target(">=", COST_TARGET),
        ours,
        reference,
    )
    cpu_ours = [run.cpu_us or 0.0 for run in ours]
    cpu_reference = [run.cpu_us or 0.0 for run in reference]
    cpu = compared(
        f"{stem}_cpu_{size.students}",
        f"reporting cost, CPU: {what}; the workers' CPU (/proc, all threads) per message: the cost on a saturated "
        f"machine (target: at most 1/{COST_TARGET:.2f} of the bare worker's)",
        "µs",
        Target("<=", round(1 / COST_TARGET, 2)),
        [Run(us) for us in cpu_ours],
        [Run(us) for us in cpu_reference],
    )
    if brokers[True] and brokers[False]:
        note = (
            f"broker CPU per message: {statistics.median(brokers[True]):,.0f} µs with {shown}, "
            f"{statistics.median(brokers[False]):,.0f} µs without"
        )
        for figure in (throughput, cpu):
            figure.note = note
            figure.samples["broker_cpu_us_ours"] = brokers[True]
            figure.samples["broker_cpu_us_reference"] = brokers[False]
    return [throughput, cpu]


__all__ = ["class_lag", "report_cost"]
