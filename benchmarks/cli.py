"""Provides ``benchmarks/run.py``: run the figures, then print one table (or JSON)."""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import pika
from rich.console import Console

from benchmarks import dashboard, reporting
from benchmarks.children import BenchError, stop_all
from benchmarks.control import Control, queue_name
from benchmarks.figures import (
    PROFILES,
    Bench,
    Figure,
    FigureFunction,
    monitor_cost,
    start_up,
    worker_compact,
    worker_throughput,
)
from benchmarks.publishing import publishing
from benchmarks.report import Machine, as_json, table
from workers.broker import BrokerError
from workers.settings import url_or_exit

FIGURES: list[FigureFunction] = [
    publishing,
    worker_throughput,
    worker_compact,
    start_up,
    monitor_cost,
    dashboard.model_throughput,
    dashboard.dashboard_lag,
    dashboard.key_latency,
    dashboard.dashboard_lag_scale,
    dashboard.key_latency_scale,
    dashboard.memory,
    reporting.class_lag,
    reporting.report_cost,
]
"""Every figure, in table order."""


def build_parser(prog: str = "benchmarks/run.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Measure our worker and publishers against bare pika on the real broker.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer messages, one pair each, under a minute (the full run has more)"
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny run that only checks the machinery")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--url", help="broker URL (default: $AMQP_URL, else guest@localhost:5672)")
    parser.add_argument(
        "--only",
        action="append",
        choices=[f.__name__ for f in FIGURES],
        help="run only this figure function (repeatable)",
    )
    return parser


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwind through the finally blocks, which stop every child and delete the queue.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None, prog: str = "benchmarks/run.py") -> int:
    args = build_parser(prog).parse_args(argv)
    url = url_or_exit(args.url, prog)
    profile = "smoke" if args.smoke else "quick" if args.quick else "full"
    params = PROFILES[profile]
    env = {**os.environ, "AMQP_URL": url}  # children get the URL here, never in argv
    log = Console(stderr=True, highlight=False).print
    queue = queue_name()
    signal.signal(signal.SIGTERM, _on_sigterm)

    started = time.monotonic()
    try:
        control = Control(url, queue)
    except BrokerError as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 1
    figures: list[Figure] = []
    try:
        machine = Machine(os.cpu_count(), control.broker_version, platform.python_version(), pika.__version__)
        bench = Bench(params, url, env, control, lambda text: log(text, style="dim"))
        log(f"{machine.cpu_count} cores, {machine.broker}; queue {queue}; {params.describe()}")
        for swept in control.sweep_orphans():
            log(f"deleted {swept}: an earlier run's queue, whose process is gone", style="dim")
        log(_byte_compile(), style="dim")
        for function in FIGURES:
            if args.only and function.__name__ not in args.only:
                continue
            figures.extend(function(bench))
    except BenchError as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 1
    except BrokerError as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl+C or SIGTERM must not cut the clean-up short: held until it is done.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            stop_all()
            _delete_queue(control, url, queue)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps(as_json(figures, params, machine, elapsed), indent=2))
    else:
        Console(width=max(140, Console().width)).print(table(figures, params, machine, elapsed))
    return 0


def _byte_compile() -> str:
    """Compile our packages to .pyc, as installing them does, so both sides start from bytecode.

    Run from a source checkout, each worker would otherwise compile ``workers/`` from
    source at every start wherever .pyc files cannot be written (this machine sets
    PYTHONDONTWRITEBYTECODE=1), where pika, the bare consumer's only import, was
    compiled when it was installed: 1.22-1.38 against 1.03-1.15 for start-up, measured.
    """
    root = Path(__file__).resolve().parent.parent
    results = [compileall.compile_dir(root / name, quiet=2) for name in ("workers", "tui", "benchmarks")]
    if all(results):
        return "byte-compiled workers/, tui/ and benchmarks/ (both sides start from .pyc, as when installed)"
    return "could not byte-compile workers/, tui/ or benchmarks/: start-up then includes compiling them"


def _delete_queue(control: Control, url: str, queue: str) -> None:
    """Delete the bench queue, on a fresh connection if the control one broke mid-run."""
    try:
        control.delete()
    except Exception:
        try:
            fresh = Control(url, queue)
            fresh.delete()
            fresh.close()
        except Exception as exc:
            print(f"benchmarks: could not delete queue {queue}: {exc}", file=sys.stderr)
    control.close()
