"""Provides runs: a preset or scenario published as one, its tasks numbered from 1, and its figures.

A run begins with ``observations.RunStarted``; the model (``tui.model.state``)
hands each fold's news on to the runs still going, and a run ends when every one
of its tasks is done or otherwise settled (lost, purged, failed). Its figures are
the ones ``dispatch-lab compare`` prints, computed here once for both: the
makespan (first publish to the last task settled), each worker's busy time (the
sum of its finished tasks' work) and its idle time while tasks waited (in the
queue, or in a worker's prefetch window behind another task), integrated over
the events' own timestamps, so a replay gives the same figures to the millisecond.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from workers.settings import AckMode, DispatchMode

RUNS_KEPT = 50
"""Runs the model remembers; older ones are dropped (their tasks keep their labels)."""


def mode_name(mode: DispatchMode) -> str:
    """``round-robin 0``, ``fair 1``, ``prefetch 10``; the ack mode after it unless manual."""
    return {0: "round-robin 0", 1: "fair 1"}.get(mode.prefetch, f"prefetch {mode.prefetch}") + (
        "" if mode.ack is AckMode.MANUAL else f" {mode.ack}"
    )


@dataclass
class WorkerFigures:
    """What one worker did in a run."""

    name: str
    done: int
    busy: float
    idle_while_waiting: float
    labels: list[str] = field(default_factory=list)


class Timed(Protocol):
    """A finished (or timed-out) run as a verdict sees it: compare's results and the dashboard's runs alike."""

    @property
    def mode(self) -> DispatchMode: ...
    @property
    def makespan(self) -> float: ...
    @property
    def workers(self) -> list[WorkerFigures]: ...
    @property
    def timed_out(self) -> bool: ...


T = TypeVar("T", bound=Timed)


def verdict(results: Sequence[T], name: Callable[[T], str]) -> str:
    """One sentence on which run was fastest and why; "" with fewer than two to compare."""
    finished = [r for r in results if not r.timed_out]
    if len(finished) < 2:
        return ""
    fastest = min(finished, key=lambda r: r.makespan)
    slowest = max(finished, key=lambda r: r.makespan)
    if slowest.makespan <= 0 or fastest is slowest:
        return ""
    if slowest.makespan < fastest.makespan * 1.1:
        return f"All modes took about the same time ({fastest.makespan:.1f}s to {slowest.makespan:.1f}s)."
    idle = max(slowest.workers, key=lambda w: w.idle_while_waiting)
    return (
        f"{name(fastest)} finished {slowest.makespan / max(fastest.makespan, 1e-9):.1f}x sooner than "
        f"{name(slowest)}; there {idle.name} sat idle {idle.idle_while_waiting:.1f}s while tasks waited."
    )


@dataclass
class Run:
    """One run: which tasks are its own, and what each worker did with them."""

    number: int
    name: str
    mode: DispatchMode
    started: float
    first_seq: int
    tasks: int
    published: int = 0
    first_published: float | None = None
    finished: float | None = None
    """When its last task settled; None while it runs."""
    clock: float = 0.0
    """Up to when idle time has been counted."""
    done: int = 0
    lost: int = 0
    redelivered: int = 0
    mode_changes: list[DispatchMode] = field(default_factory=list)
    """Modes asked for while it ran (a scenario's actions, a key): its figures are not one mode's then."""
    open: set[str] = field(default_factory=set)
    """Its tasks not yet settled, by message id."""
    figures: dict[str, WorkerFigures] = field(default_factory=dict)
    """Per worker present while it ran, in the order they came."""

    def __post_init__(self) -> None:
        self.clock = self.started

    @property
    def title(self) -> str:
        """``r2 odd-heavy``."""
        return f"r{self.number} {self.name}"

    @property
    def running(self) -> bool:
        return self.finished is None

    @property
    def workers(self) -> list[WorkerFigures]:
        return list(self.figures.values())

    @property
    def timed_out(self) -> bool:
        """Never: an unfinished run is not compared (``Timed``)."""
        return False

    @property
    def makespan(self) -> float:
        """Seconds from its first publish until its last task settled (or, while it runs, the last event)."""
        end = self.finished if self.finished is not None else self.clock
        return max(0.0, end - (self.first_published if self.first_published is not None else self.started))

    def elapsed(self, now: float) -> float:
        """Seconds since its first publish, up to ``now`` while it runs."""
        end = self.finished if self.finished is not None else now
        return max(0.0, end - (self.first_published if self.first_published is not None else self.started))

    def describe_mode(self) -> str:
        """Its mode, and every mode asked for while it ran: ``round-robin 0 → fair 1``."""
        return " → ".join(mode_name(m) for m in [self.mode, *self.mode_changes])

    def holds(self, seq: int) -> bool:
        """The publisher's task ``seq`` is one of this run's."""
        return self.first_seq <= seq < self.first_seq + self.tasks

    def worker(self, name: str) -> WorkerFigures:
        figures = self.figures.get(name)
        if figures is None:
            figures = self.figures[name] = WorkerFigures(name, 0, 0.0, 0.0)
        return figures

    def tick(self, ts: float, idle: Iterable[str]) -> None:
        """Time runs on to ``ts``: the workers in ``idle`` sat idle while tasks waited all along since the clock."""
        if not math.isfinite(ts) or ts <= self.clock:
            return  # arrivals from different pipes come a little out of order: count each moment once
        for name in idle:
            self.worker(name).idle_while_waiting += ts - self.clock
        self.clock = ts

    def finished_task(self, worker: str, label: str, started: float, ended: float) -> None:
        figures = self.worker(worker)
        figures.done += 1
        figures.busy += max(0.0, ended - started)
        figures.labels.append(label)
        self.done += 1


class Runs:
    """Every run of the session (the last RUNS_KEPT), and the ones still going."""

    def __init__(self) -> None:
        self.all: list[Run] = []
        self.active: list[Run] = []
        """Runs not yet finished, oldest first (usually none or one)."""
        self.count = 0

    def start(
        self, ts: float, name: str, first_seq: int, tasks: int, mode: DispatchMode, present: Iterable[str]
    ) -> Run:
        """A new run; ``present``: the live workers, who get a line in its figures even if they do nothing."""
        self.count += 1
        run = Run(self.count, name, mode, ts, first_seq, tasks)
        for worker in present:
            run.worker(worker)
        self.all.append(run)
        del self.all[:-RUNS_KEPT]
        self.active.append(run)
        return run

    def __repr__(self) -> str:
        return f"Runs({self.all!r}, active={[r.number for r in self.active]})"

    def owner(self, seq: int) -> Run | None:
        """The run still going whose task ``seq`` is."""
        for run in self.active:
            if run.holds(seq):
                return run
        return None

    def by_number(self, number: int) -> Run | None:
        for run in self.active:
            if run.number == number:
                return run
        return None

    def end(self, run: Run, ts: float) -> None:
        run.finished = max(ts, run.clock)
        run.clock = run.finished
        self.active.remove(run)

    @property
    def latest(self) -> Run | None:
        return self.all[-1] if self.all else None

    def comparable(self, limit: int = 3) -> list[Run]:
        """The latest run and the finished ones of the same workload just before it, oldest first, at most ``limit``."""
        latest = self.latest
        if latest is None:
            return []
        same = [r for r in self.all[:-1] if r.name == latest.name and r.tasks == latest.tasks and not r.running]
        return [*same[-(limit - 1) :], latest] if limit > 1 else [latest]


def run_sentence(runs: Sequence[Run]) -> str:
    """The summary's last line: the verdict over finished runs of one workload, or what the latest one showed."""
    finished = [r for r in runs if not r.running]
    said = verdict(finished, lambda r: f"r{r.number} {r.describe_mode()}")
    if said or not finished:
        return said
    last = finished[-1]
    idle = max(last.workers, key=lambda w: w.idle_while_waiting, default=None)
    if idle is None or idle.idle_while_waiting < 0.05:
        return f"{last.title} took {last.makespan:.1f}s; no worker sat idle while tasks waited."
    return (
        f"{last.title} took {last.makespan:.1f}s; {idle.name} sat idle {idle.idle_while_waiting:.1f}s "
        "while tasks waited."
    )
