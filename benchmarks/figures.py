"""Provides the benchmark figures: what each one measures, how, and the target it is held to.

A figure function takes the ``Bench`` (parameters, broker, logging) and returns
its ``Figure`` rows. benchmarks/cli.py lists every figure in table order; the
dashboard's figures come from benchmarks/dashboard.py.

Every comparison runs its two sides alternately (A B, B A, A B, ...) on the same
machine in the same minute, and reports medians, so drift on a noisy, shared
2-core machine hits both sides alike.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from benchmarks.bare_consumer import ack_batch
from benchmarks.children import BenchError, Group, Kind
from benchmarks.control import Control, Monitor


@dataclass(frozen=True)
class Params:
    """How big a run is; ``describe`` states it in the table."""

    profile: str
    messages: int
    """Tasks pre-published per throughput run at prefetch 1."""
    windowed_messages: int
    """The same with a window (prefetch > 1), where two consumers drain 50,000-60,000 tasks a second here.

    20,000 took a third of a second, of which drain_rate times only the part both consumers
    were acking: worker_compact_p50's per-pair ratios spread 0.68-0.99 in six pairs, against
    0.81-0.97 with 150,000 tasks (3 s a drain) in the same half hour, on the same code.
    """
    pairs: int
    """Alternating (ours, reference) pairs per throughput figure at prefetch 1."""
    windowed_pairs: int
    """The same with a window, where the per-pair ratios move more on shared cores: 21 pairs of
    worker_compact_p50 (three runs, load average 4-9) had a standard deviation of 0.10, so the median
    of 7 moves by about 0.05 from run to run, of 13 by 0.035."""
    startup_pairs: int
    monitor_messages: int
    monitor_pairs: int
    prefetches: tuple[int, ...] = (1, 50)
    consumers: int = 2
    startup_workers: int = 8
    monitor_prefetch: int = 1
    monitor_hz: float = 4.0
    publish_messages: int = 10_000
    """Tasks per publishing run (the issue's burst)."""
    publish_pairs: int = 7
    """Rounds of the publishing figures, each running every side once."""

    def throughput_messages(self, prefetch: int) -> int:
        """Tasks per throughput run at this prefetch: enough for a drain of a few seconds."""
        return self.messages if prefetch == 1 else self.windowed_messages

    def throughput_pairs(self, prefetch: int) -> int:
        return self.pairs if prefetch == 1 else self.windowed_pairs

    def describe(self) -> str:
        return (
            f"profile {self.profile}: throughput {self.messages:,} pre-published persistent 0-dot tasks "
            f"per run at prefetch 1, {self.windowed_messages:,} with a window, {self.consumers} consumers "
            f"a side, manual ack, prefetch {' and '.join(map(str, self.prefetches))}, {self.pairs} alternating "
            f"pairs at prefetch 1, {self.windowed_pairs} with a window; "
            f"start-up {self.startup_workers} processes, {self.startup_pairs} pairs; "
            f"monitor {self.monitor_hz:g} Hz passive declare, {self.monitor_messages:,} tasks, "
            f"prefetch {self.monitor_prefetch}, {self.monitor_pairs} pairs; publishing {self.publish_messages:,} "
            f"tasks, {self.publish_pairs} rounds. Values are medians; "
            "ratio = median of the per-pair ratios."
        )


PROFILES: dict[str, Params] = {
    "full": Params(
        "full",
        messages=20_000,
        windowed_messages=150_000,
        pairs=7,
        windowed_pairs=13,
        startup_pairs=9,
        monitor_messages=20_000,
        monitor_pairs=21,
    ),
    # A look at every figure in under a minute (issue 16): one pair each, so its ratios are rough.
    "quick": Params(
        "quick",
        messages=4_000,
        windowed_messages=10_000,
        pairs=1,
        windowed_pairs=1,
        startup_pairs=2,
        monitor_messages=4_000,
        monitor_pairs=1,
        publish_pairs=1,
    ),
    "smoke": Params(
        "smoke",
        messages=300,
        windowed_messages=300,
        pairs=1,
        windowed_pairs=1,
        startup_pairs=1,
        monitor_messages=300,
        monitor_pairs=1,
        publish_messages=300,
        publish_pairs=1,
    ),
}


@dataclass(frozen=True)
class Target:
    """What the ratio must reach: ``>= 0.90`` or ``<= 1.30``."""

    op: Literal[">=", "<="]
    value: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:.2f}"


@dataclass(frozen=True)
class Run:
    """One measurement: the figure's value, and (drains) CPU microseconds per message."""

    value: float
    cpu_us: float | None = None
    """CPU of the consumer processes after their ready line plus our reading of their stdout."""
    reader_us: float | None = None
    """The part of cpu_us spent in the benchmark's reader threads (reading our worker's events)."""
    decode_us: float | None = None
    """Decoding those events, once the run ended: the dashboard's cost, not part of cpu_us."""


@dataclass
class Figure:
    """One row of the table; ``ours is None`` means not measured (yet)."""

    key: str
    what: str
    unit: str
    ours: float | None = None
    reference: float | None = None
    ratio: float | None = None
    target: Target | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    cpu_ours: float | None = None
    cpu_reference: float | None = None
    """Median CPU microseconds per message of each side, when measured."""
    note: str = ""

    @property
    def measured(self) -> bool:
        return self.ours is not None

    @property
    def met(self) -> bool | None:
        if self.ratio is None or self.target is None:
            return None
        return self.target.met(self.ratio)


@dataclass
class Bench:
    """What a figure function needs: parameters, the broker, and a progress log."""

    params: Params
    url: str
    env: dict[str, str]
    control: Control
    log: Callable[[str], None]


FigureFunction = Callable[[Bench], list[Figure]]


# ----- helpers


def alternate(pairs: int, run_a: Callable[[], Run], run_b: Callable[[], Run]) -> tuple[list[Run], list[Run]]:
    """Run A and B ``pairs`` times each, swapping the order every pair (AB BA AB ...)."""
    a: list[Run] = []
    b: list[Run] = []
    for i in range(pairs):
        if i % 2 == 0:
            a.append(run_a())
            b.append(run_b())
        else:
            b.append(run_b())
            a.append(run_a())
    return a, b


def compared(
    key: str, what: str, unit: str, target: Target, ours: list[Run], reference: list[Run], note: str = ""
) -> Figure:
    """A figure from paired runs: medians of each side, median of the per-pair ratios."""
    ratios = [o.value / r.value for o, r in zip(ours, reference, strict=True)]
    samples = {"ours": [o.value for o in ours], "reference": [r.value for r in reference], "ratio": ratios}
    figure = Figure(
        key=key,
        what=what,
        unit=unit,
        ours=statistics.median(samples["ours"]),
        reference=statistics.median(samples["reference"]),
        ratio=statistics.median(ratios),
        target=target,
        samples=samples,
        note=note,
    )
    cpu_ours = [o.cpu_us for o in ours if o.cpu_us is not None]
    cpu_reference = [r.cpu_us for r in reference if r.cpu_us is not None]
    if len(cpu_ours) == len(ours) and len(cpu_reference) == len(reference):
        samples["ours_cpu_us"], samples["reference_cpu_us"] = cpu_ours, cpu_reference
        reader = [o.reader_us for o in ours if o.reader_us is not None]
        if len(reader) == len(ours):
            samples["ours_reader_cpu_us"] = reader
        decode = [o.decode_us for o in ours if o.decode_us is not None]
        if len(decode) == len(ours):
            samples["ours_decode_cpu_us"] = decode
        figure.cpu_ours = statistics.median(cpu_ours)
        figure.cpu_reference = statistics.median(cpu_reference)
    return figure


def drain_rate(ack_times: list[list[float]]) -> float:
    """Acks per second while every consumer was acking.

    The window runs from the last consumer's first ack to the first consumer's
    last ack, so neither the stagger of process start-up nor a lone consumer's
    tail counts. When that window is too thin to trust (tiny runs), the whole
    span from the first ack to the last is used.
    """
    active = [times for times in ack_times if times]
    every = sorted(t for times in active for t in times)
    if len(every) < 2:
        raise BenchError("fewer than two acks were seen: nothing to time")
    start = max(times[0] for times in active)
    end = min(times[-1] for times in active)
    inside = sum(1 for t in every if start <= t <= end)
    if end - start > 0 and inside >= len(every) // 2:
        return inside / (end - start)
    span = every[-1] - every[0]
    if span <= 0:
        raise BenchError("all acks carry the same time: nothing to time")
    return (len(every) - 1) / span


def _deadline(messages: int) -> float:
    return time.monotonic() + 60.0 + messages / 200


def drain(bench: Bench, kind: Kind, prefetch: int, messages: int, *, monitor: bool = False) -> Run:
    """Pre-publish ``messages`` tasks, let consumers of ``kind`` drain them; msg/s and CPU per message."""
    p = bench.params
    bench.control.prepare(messages)
    watch: contextlib.AbstractContextManager[object] = (
        Monitor(bench.url, bench.control.queue, p.monitor_hz) if monitor else contextlib.nullcontext()
    )
    with watch as running:
        group = Group(kind, p.consumers, bench.control.queue, prefetch, bench.env)
        try:
            group.wait("acked", _deadline(messages), total=messages)
            cpu = group.consuming_cpu()
        finally:
            group.stop()
    if isinstance(running, Monitor):
        if running.error:
            raise BenchError(f"the monitor failed: {running.error}")
        if running.probes < 1:
            raise BenchError("the monitor made no probe")
    _check_stream(group, messages)
    left = bench.control.figures()[0]
    if left:
        raise BenchError(f"{left} messages were left in the queue after a {kind} run")
    rate = drain_rate([m.ack_times for m in group.members])
    if cpu is None or cpu <= 0:
        return Run(rate)
    reader = sum(m.reader_cpu for m in group.members)
    if kind == "bare":
        return Run(rate, (cpu + reader) / messages * 1e6)
    decode = sum(m.decode_cpu for m in group.members)
    return Run(rate, (cpu + reader) / messages * 1e6, reader / messages * 1e6, decode / messages * 1e6)


def _check_stream(group: Group, messages: int) -> None:
    """Every task acked once, and (ours) every event line whole: received, started, done each N times."""
    acked = sum(len(m.ack_times) for m in group.members)
    if acked != messages:
        raise BenchError(f"{group.kind} consumers acked {acked} tasks, expected {messages}")
    garbled = sum(m.garbled for m in group.members)
    if garbled:
        raise BenchError(f"{group.kind} consumers wrote {garbled} lines that do not decode")
    if group.kind != "bare":
        for name in ("received", "started", "done"):
            seen = sum(m.counts[name] for m in group.members)
            if seen != messages:
                raise BenchError(f"the workers wrote {seen} {name} events for {messages} tasks")


def launch(bench: Bench, kind: Kind) -> Run:
    """Seconds from launching the processes to the last one's ready line."""
    bench.control.prepare(0)
    group = Group(kind, bench.params.startup_workers, bench.control.queue, 1, bench.env)
    try:
        group.wait("ready", time.monotonic() + 60.0)
        return Run(group.ready_after())
    finally:
        group.stop()


def _logged(bench: Bench, label: str, unit: str, run: Callable[[], Run]) -> Callable[[], Run]:
    def logged() -> Run:
        result = run()
        text = f"{result.value:,.3f} {unit}" if unit == "s" else f"{result.value:,.0f} {unit}"
        if result.cpu_us is not None:
            text += f", {result.cpu_us:,.0f} µs CPU/msg"
            if result.reader_us is not None:
                text += f" ({result.reader_us:,.0f} of it reading events)"
            if result.decode_us is not None:
                text += f"; decoding them after the run: {result.decode_us:,.0f} µs/msg"
        bench.log(f"  {label}: {text}")
        return result

    return logged


# ----- the figures


def worker_throughput(bench: Bench) -> list[Figure]:
    """Our worker (its events read as the dashboard reads them) vs bare pika consumers, per prefetch."""
    return _against_bare(
        bench, "ours", "worker_throughput", "worker throughput",
        "`workers.worker --events` (events read in chunks, decoded after the run)",
    )  # fmt: skip


def worker_compact(bench: Bench) -> list[Figure]:
    """Our worker writing the compact event form the dashboard asks for vs the strongest bare pika consumer."""
    return _against_bare(
        bench, "compact", "worker_compact", "worker throughput, compact events",
        "`workers.worker --events --compact-events` (the dashboard's form)",
    )  # fmt: skip


def _against_bare(bench: Bench, side: Kind, key: str, label: str, ours_are: str) -> list[Figure]:
    """Per prefetch, ``side``'s drains alternating with bare pika's: the figure ``<key>_p<prefetch>``."""
    p = bench.params
    figures = []
    for prefetch in p.prefetches:
        messages = p.throughput_messages(prefetch)
        bench.log(f"{label}, prefetch {prefetch}, {messages:,} tasks a run")
        ours, bare = alternate(
            p.throughput_pairs(prefetch),
            _logged(bench, "ours", "msg/s", functools.partial(drain, bench, side, prefetch, messages)),
            _logged(bench, "bare", "msg/s", functools.partial(drain, bench, "bare", prefetch, messages)),
        )
        figures.append(
            compared(
                f"{key}_p{prefetch}",
                f"{label}, prefetch {prefetch}: {p.consumers} {ours_are} vs {p.consumers} bare pika consumers "
                f"{_bare_acks(prefetch)}, msg/s",
                "msg/s",
                Target(">=", 0.90),
                ours,
                bare,
            )
        )
    return figures


def _bare_acks(prefetch: int) -> str:
    every = ack_batch(prefetch)
    return "acking each delivery" if every == 1 else f"acking multiple=True every {every} deliveries + 50 ms flush"


def start_up(bench: Bench) -> list[Figure]:
    """Launch to ready: our workers vs bare pika consumers, started the same way."""
    p = bench.params
    bench.log(f"start-up, {p.startup_workers} processes")
    ours, bare = alternate(
        p.startup_pairs,
        _logged(bench, "ours", "s", lambda: launch(bench, "ours")),
        _logged(bench, "bare", "s", lambda: launch(bench, "bare")),
    )
    return [
        compared(
            "start_up",
            f"start-up: launch of {p.startup_workers} `python -u -m` processes to the last ready line, "
            "workers vs bare consumers, s",
            "s",
            Target("<=", 1.30),
            ours,
            bare,
        )
    ]


def monitor_cost(bench: Bench) -> list[Figure]:
    """Bare consumers' throughput with the dashboard's queue poll on vs off."""
    p = bench.params
    bench.log(f"monitor cost, {p.monitor_hz:g} Hz")
    on, off = alternate(
        p.monitor_pairs,
        _logged(
            bench,
            "monitor on",
            "msg/s",
            lambda: drain(bench, "bare", p.monitor_prefetch, p.monitor_messages, monitor=True),
        ),
        _logged(bench, "monitor off", "msg/s", lambda: drain(bench, "bare", p.monitor_prefetch, p.monitor_messages)),
    )
    return [
        compared(
            "monitor_cost",
            f"monitor cost: {p.consumers} bare consumers' msg/s with the dashboard's queue monitor on "
            f"({p.monitor_hz:g} Hz passive declare on one channel, management API every 2 s when it answers; "
            "ours) vs off (reference)",
            "msg/s",
            Target(">=", 0.98),
            on,
            off,
        )
    ]
