"""Provides the publishing figures: our publishers, with confirms, against bare pika publishers.

Three sides are measured in turn within each round (ours, bare without confirms,
bare with a window of confirms; the order reversed every other round), each on
an empty queue with no consumer, 0-dot persistent tasks with a message id each:

- ``publish_new_task``: ``python -u -m workers.new_task --count N`` vs the
  tutorial's publisher (``benchmarks.bare_publisher``, no confirms), each a
  process: msg/s over the wall time from launch to exit, what a user waits for.
- ``publish_pane``: the dashboard's PublisherThread (built by ``build_pipeline``,
  its connection already open, reporting into the pipeline's inbox) sends a burst
  of N: msg/s from ``submit`` to the last confirm, vs bare pika without confirms
  in this process, from its first publish to its last.
- ``publish_burst``: the same burst's seconds to the last confirm vs bare pika
  with the same window of confirms (its asynchronous connection), first publish
  to last confirm.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

from benchmarks.bare_publisher import publish_unconfirmed, publish_windowed
from benchmarks.children import ROOT, BenchError
from benchmarks.figures import Bench, Figure, Run, Target, compared
from tui.engine.backend import LabConfig, Pipeline, build_pipeline
from tui.model import observations as obs
from workers.new_task import WINDOW


def _fresh(bench: Bench) -> None:
    bench.control.prepare(0)


def _check_filled(bench: Bench, count: int, who: str, timeout: float = 30.0) -> None:
    """The queue holds exactly ``count`` tasks (bare without confirms: once the broker has read them all)."""
    deadline = time.monotonic() + timeout
    while (ready := bench.control.figures()[0]) < count and time.monotonic() < deadline:
        bench.control.connection.sleep(0.05)
    if ready != count:
        raise BenchError(f"{who}: the queue holds {ready} tasks after publishing {count}")


def _process(bench: Bench, args: list[str], count: int, who: str) -> Run:
    _fresh(bench)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-u", *args], cwd=ROOT, env=bench.env, capture_output=True, text=True, timeout=120, check=False
    )
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise BenchError(f"{who} exited with {done.returncode}: {done.stderr.strip()[-300:]}")
    _check_filled(bench, count, who)
    return Run(count / elapsed)


class PanePublisher:
    """The dashboard's publisher thread, started once; each burst is timed from submit to its last confirm."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.pipeline: Pipeline = build_pipeline(LabConfig(url=bench.url, queue=bench.control.queue))
        self.pipeline.publisher.start()
        self.burst(1, timeout=30.0)  # connected, queue declared, confirms on: as after the pane's first send

    def burst(self, count: int, timeout: float = 120.0) -> float:
        """Seconds from submitting ``count`` tasks to the last one's confirm; every one confirmed once, in order."""
        _fresh(self.bench)
        inbox, publisher = self.pipeline.inbox, self.pipeline.publisher
        inbox.take()
        started = time.time()
        publisher.submit(["Hello World!"] * count)
        deadline = time.monotonic() + timeout
        published: list[str] = []
        confirmed: list[str] = []
        last = started
        while len(confirmed) < count:
            if time.monotonic() > deadline:
                raise BenchError(f"the pane's publisher: {len(confirmed)} of {count} confirmed in {timeout:g} s")
            time.sleep(0.02)
            for item in inbox.take():
                kind = type(item)
                if kind is obs.Confirmed:
                    assert isinstance(item, obs.Confirmed)
                    confirmed.append(item.msg_id)
                    last = item.ts
                elif kind is obs.Published:
                    assert isinstance(item, obs.Published)
                    published.append(item.msg_id)
                elif kind is obs.PublishFailed:
                    raise BenchError(f"the pane's publisher failed a task: {item}")
        if confirmed != published[: len(confirmed)] or len(set(confirmed)) != count:
            raise BenchError("the pane's publisher confirmed tasks out of order or twice")
        _check_filled(self.bench, count, "the pane's publisher")
        return last - started

    def close(self) -> None:
        self.pipeline.publisher.stop(timeout=5.0)


def _timed(run: Callable[[], tuple[float, float]]) -> float:
    first, last = run()
    return last - first


def publishing(bench: Bench) -> list[Figure]:
    """new_task and the pane's publisher (confirms, a window) vs bare pika without confirms and with a window."""
    p = bench.params
    count, rounds = p.publish_messages, p.publish_pairs
    bench.log(f"publishing, {count:,} tasks, window {WINDOW}")
    q = bench.control.queue
    env_url = bench.url

    def new_task() -> Run:
        return _process(bench, ["-m", "workers.new_task", "--queue", q, "--count", str(count)], count, "new_task")

    def bare_process() -> Run:
        return _process(bench, ["-m", "benchmarks.bare_publisher", "--queue", q, "--count", str(count)], count, "bare")

    pane = PanePublisher(bench)
    try:

        def pane_burst() -> float:
            return pane.burst(count)

        def bare_unconfirmed() -> float:
            _fresh(bench)
            seconds = _timed(lambda: publish_unconfirmed(env_url, q, count))
            _check_filled(bench, count, "bare without confirms")
            return seconds

        def bare_window() -> float:
            _fresh(bench)
            seconds = _timed(lambda: publish_windowed(env_url, q, count, WINDOW))
            _check_filled(bench, count, "bare with a window")
            return seconds

        sides: dict[str, Callable[[], float]] = {
            "new_task": lambda: new_task().value,
            "bare process": lambda: bare_process().value,
            "pane": pane_burst,
            "bare unconfirmed": bare_unconfirmed,
            "bare window": bare_window,
        }
        results: dict[str, list[float]] = {name: [] for name in sides}
        for round_ in range(rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for name in order:
                value = sides[name]()
                results[name].append(value)
                unit = "msg/s" if name in ("new_task", "bare process") else "s"
                bench.log(f"  {name}: {value:,.0f} {unit}" if unit == "msg/s" else f"  {name}: {value:.3f} s")
    finally:
        pane.close()

    pane_rate = [Run(count / s) for s in results["pane"]]
    return [
        compared(
            "publish_new_task",
            f"publishing: `new_task --count {count:,}` (confirms, window {WINDOW}, mandatory, a message id each) "
            "vs the tutorial's bare pika publisher without confirms, each a process, msg/s from launch to exit",
            "msg/s",
            Target(">=", 0.80),
            [Run(v) for v in results["new_task"]],
            [Run(v) for v in results["bare process"]],
        ),
        compared(
            "publish_pane",
            f"publishing: the pane's publisher thread, a burst of {count:,} (confirms, window {WINDOW}), submit "
            "to the last confirm, vs bare pika without confirms in the same process, msg/s",
            "msg/s",
            Target(">=", 0.80),
            pane_rate,
            [Run(count / s) for s in results["bare unconfirmed"]],
        ),
        compared(
            "publish_burst",
            f"publishing: the pane's burst of {count:,}, seconds from submit to the last confirm, vs bare pika's "
            f"asynchronous connection with the same window of {WINDOW} confirms, first publish to last confirm",
            "s",
            Target("<=", 1.25),
            [Run(s) for s in results["pane"]],
            [Run(s) for s in results["bare window"]],
        ),
    ]
