"""Provides ``dispatch-lab compare``: one workload, once per dispatch mode, side by side."""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tui.engine.runner import Progress, RunResult, ScenarioRun
from tui.engine.session_log import SessionLog
from tui.model.runs import mode_name
from tui.model.runs import verdict as run_verdict
from tui.model.scenarios import Scenario, ScenarioError, find
from tui.teaching.export import write_ledger_csv
from tui.text import for_toast, printable
from workers.broker import BrokerError
from workers.local_node import LocalNode, LocalNodeError
from workers.settings import (
    AckMode,
    DispatchMode,
    FailMode,
    QueueSpec,
    SettingsError,
    add_connection_args,
    add_fail_arg,
    add_queue_args,
    check_prefetch,
    url_or_exit,
)
from workers.worker import ack_arg, positive_float


def prefetch_list(text: str) -> list[int]:
    """``0,1,10`` -> [0, 1, 10]: SettingsError for a value out of range, ValueError for anything else."""
    modes = [check_prefetch(int(part)) for part in text.split(",") if part.strip()]
    if not modes:  # no run at all: nothing to compare, and the table would have no first row
        raise ValueError("no prefetch value")
    return modes


def parse_modes(text: str) -> list[int]:
    """``--modes`` for argparse."""
    try:
        return prefetch_list(text)
    except ValueError as exc:
        message = (
            str(exc) if isinstance(exc, SettingsError) else f"--modes takes prefetch numbers like 0,1,10, not {text!r}"
        )
        raise argparse.ArgumentTypeError(message) from None


@contextmanager
def broker_for(url: str, scenario: Scenario, progress: Progress) -> Iterator[tuple[str, LocalNode | None]]:
    """The broker a scenario runs on: ``url``'s, or a private node of its own (an ack timeout needs one).

    BrokerError when the node cannot start; it is stopped and its data deleted afterwards.
    """
    if not scenario.private_broker:
        yield url, None
        return
    node = LocalNode(ack_timeout=scenario.ack_timeout)
    try:
        progress(f"{scenario.name}: starting a private RabbitMQ node (about 10 s) …")
        try:
            node.start(lambda phase: progress(f"{scenario.name}: private node: {phase} …"))
        except LocalNodeError as exc:
            raise BrokerError(str(exc)) from None
        yield node.url, node
    finally:
        node.destroy()


def compare_modes(
    url: str,
    scenario: Scenario,
    prefetches: list[int],
    *,
    ack: AckMode,
    workers: int,
    seconds_per_dot: float,
    progress: Progress,
    timeout: float = 600.0,
) -> tuple[list[RunResult], str]:
    """Run ``scenario`` once per prefetch value, one after another, each on a fresh queue with its own workers.

    Returns the runs that finished and the broker's one-sentence error that stopped the
    rest ("" when none did). Blocks for the whole comparison: call it from a thread;
    ``progress`` is called on that thread.
    """
    runs: list[RunResult] = []
    try:
        with broker_for(url, scenario, progress) as (where, node):
            for prefetch in prefetches:
                mode = DispatchMode(prefetch, ack)
                run = ScenarioRun(where, scenario, mode=mode, workers=workers, node=node,
                                  seconds_per_dot=seconds_per_dot, progress=progress, timeout=timeout)  # fmt: skip
                progress(f"{scenario.name}: running under {mode.describe()} …")
                runs.append(run.run())
    except BrokerError as exc:
        return runs, str(exc)
    return runs, ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatch-lab compare",
        description="Run one scenario once per prefetch setting on fresh queues with real workers; compare.",
    )
    add_connection_args(parser)
    parser.add_argument("--scenario", default="odd-heavy", help="a built-in name or a .json file")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds-per-dot", type=positive_float, default=0.2, metavar="F")
    parser.add_argument("--modes", type=parse_modes, default=[0, 1], help="prefetch values, e.g. 0,1,10")
    parser.add_argument("--ack", type=ack_arg, default=AckMode.MANUAL)
    add_queue_args(parser, transient=False)
    add_fail_arg(parser)
    # Unset, the scenario's own queue and failure mode apply (poison: quorum, limit 3, dead letters).
    parser.set_defaults(queue_type=None, on_fail=None)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run at most")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--out", type=Path, default=None, help="save events, ledgers and an SVG here")
    return parser


def table(results: list[RunResult]) -> Table:
    """Side by side: per mode the makespan, and per worker its tasks, busy time and idle-while-work-waited."""
    best = min((r.makespan for r in results if not r.timed_out), default=0.0)
    # Text for whatever comes from a scenario file or the workers (names, task labels): a string cell is markup.
    ack = results[0].mode.ack
    title = Text(
        f"scenario {for_toast(results[0].scenario)} under {ack.words}: the same tasks under each prefetch",
        "table.title",
    )
    out = Table(title=title, box=box.SIMPLE_HEAD)
    for name, justify in (("mode", "left"), ("makespan", "right"), ("worker", "left"), ("done", "right"),
                          ("busy", "right"), ("idle*", "right"), ("tasks", "left"), ("redeliv", "right"),
                          ("lost", "right"), ("dup", "right")):  # fmt: skip
        out.add_column(name, justify=justify, no_wrap=name != "tasks")  # type: ignore[arg-type]
    for result in results:
        span = Text(f"{result.makespan:.1f}s", "bold green" if result.makespan == best else "bold")
        if result.timed_out:
            span = Text("timed out", "bold red")
        for index, w in enumerate(result.workers):
            first = index == 0
            labels = Text(printable(" ".join(w.labels)) if len(w.labels) <= 8 else f"{len(w.labels)} tasks")
            idle = Text(f"{w.idle_while_waiting:.1f}s", "bold red" if w.idle_while_waiting > 0.5 else "green")
            out.add_row(
                mode_name(result.mode) if first else "", span if first else "", Text(printable(w.name)), str(w.done),
                f"{w.busy:.1f}s", idle, labels, str(result.redeliveries) if first else "",
                str(result.lost) if first else "", str(result.duplicates) if first else "",
                end_section=index == len(result.workers) - 1,
            )  # fmt: skip
    out.caption = "idle* = time a worker sat idle while tasks were waiting (in the queue or behind another task)"
    return out


def checks(results: list[RunResult]) -> Text:
    """The scenario's expectations, per run."""
    text = Text()
    for result in results:
        for check in result.checks:
            mark, style = ("✓", "green") if check.ok else ("✗", "bold red")
            text.append(f"{mark} {mode_name(result.mode)}: {printable(check.describe())}\n", style)
    return text


def prefetch_note(ack: AckMode) -> str:
    """What an ack mode does to a comparison of prefetch values; "" when prefetch means what it says."""
    if ack.broker_acks_on_delivery:
        return (
            f"Under {ack.words} prefetch limits nothing: the broker deals every ready task out at once, "
            "so each prefetch value here dispatches the same way."
        )
    return ""


def failure_lines(results: list[RunResult]) -> Text:
    """Per run, what failed and what the broker did: dead letters, delivery counts, the good tasks it held up."""
    text = Text()
    for result in results:
        figures = result.failures()
        if not figures["failures"] and not figures["ack_lost"]:
            continue
        bad = ", ".join(
            f"{b['task']} {b['state']} after {b['deliveries']} deliveries"
            for b in figures["bad_tasks"]  # type: ignore[attr-defined]
        )
        line = (
            f"{mode_name(result.mode)}: {figures['failures']} failures ({result.on_fail}), "
            f"{figures['dead_lettered']} dead-lettered, {figures['dropped']} dropped"
        )
        if result.queue.type.counts_deliveries:
            line += f", largest x-delivery-count {figures['max_delivery_count']}"
        if figures["ack_lost"]:
            line += f", {figures['ack_lost']} finished after an ack timeout (ack lost)"
        if bad:
            line += f"; {bad}"
        delayed = " ".join(str(d["task"]) for d in figures["good_delayed"])  # type: ignore[attr-defined]
        dead = " ".join(str(label) for label in figures["good_dead_lettered"])  # type: ignore[attr-defined]
        line += f"; good tasks held up: {delayed or 'none'}; dead-lettered with it: {dead or 'none'}"
        text.append(printable(line) + "\n", "yellow")
    return text


def verdict(results: list[RunResult]) -> str:
    """One sentence on which mode won and why (``tui.model.runs.verdict``, as the dashboard's run summary).

    Under a mode where prefetch limits nothing, it says that first.
    """
    note = prefetch_note(results[0].mode.ack) if results else ""
    said = run_verdict(results, lambda result: mode_name(result.mode))
    return f"{note} {said}".strip()


def report(results: list[RunResult], console: Console) -> None:
    """The table, each run's checks and the verdict."""
    console.print(table(results))
    console.print(failure_lines(results), end="")
    console.print(checks(results), end="")
    console.print(printable(verdict(results)), markup=False)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    # Not a terminal (a pipe, CI): wide enough for the table anyway.
    console = Console(stderr=args.json, record=True, width=None if sys.stdout.isatty() else 110)
    # Errors go to stderr, whole: soft_wrap, or rich breaks a long sentence at the console's width.
    errors = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
    if not 1 <= args.workers <= 32:
        errors.print(f"dispatch-lab compare: --workers must be between 1 and 32, not {args.workers}.")
        return 2
    try:
        scenario = find(args.scenario)
    except ScenarioError as exc:
        errors.print(f"dispatch-lab compare: {exc}")
        return 2
    url = url_or_exit(args.url, "dispatch-lab compare")
    spec: QueueSpec | None = None
    if args.queue_type is not None or args.delivery_limit is not None or args.dead_letter:
        base = scenario.queue or QueueSpec()
        try:
            spec = QueueSpec(
                True,
                args.queue_type or base.type,
                args.delivery_limit if args.delivery_limit is not None else base.delivery_limit,
                args.dead_letter or base.dead_letter,
            )
        except SettingsError as exc:
            errors.print(f"dispatch-lab compare: {exc}")
            return 2
    on_fail: FailMode | None = args.on_fail
    results: list[RunResult] = []
    try:
        with broker_for(url, scenario, lambda text: errors.print(printable(text))) as (where, node):
            results = _run_all(args, scenario, where, node, spec, on_fail, console)
    except BrokerError as exc:
        errors.print(f"dispatch-lab compare: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps({"results": [r.as_dict() for r in results], "verdict": verdict(results)}, indent=2))
    else:
        report(results, console)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare.json").write_text(json.dumps([r.as_dict() for r in results], indent=2))
        if args.json:  # the table was not printed: draw it for the picture alone
            console = Console(file=io.StringIO(), record=True, width=110)
            report(results, console)
        console.save_svg(str(args.out / "compare.svg"), title="dispatch-lab compare")
    failed = any(not c.ok for r in results for c in r.checks) or any(r.timed_out for r in results)
    return 3 if failed else 0


def _run_all(
    args: argparse.Namespace,
    scenario: Scenario,
    url: str,
    node: LocalNode | None,
    spec: QueueSpec | None,
    on_fail: FailMode | None,
    console: Console,
) -> list[RunResult]:
    """One run per prefetch value, on ``url``'s broker; BrokerError stops them."""
    results: list[RunResult] = []
    for prefetch in args.modes:
        mode = DispatchMode(prefetch, args.ack)
        log = None
        if args.out is not None:
            log = SessionLog(args.out / f"prefetch-{prefetch}" / "events.jsonl")
            log.start()
        with console.status(Text(f"{for_toast(scenario.name)}: {mode.describe()} …")) as status:
            run = ScenarioRun(url, scenario, mode=mode, workers=args.workers,
                              seconds_per_dot=args.seconds_per_dot, timeout=args.timeout, log=log,
                              progress=lambda text: status.update(Text(printable(text))),
                              node=node, queue=spec, on_fail=on_fail)  # fmt: skip
            if log is not None:
                # The log's first line, as the dashboard's: without it a replay knows neither the
                # mode (it showed prefetch 0 as fair dispatch), the queue, nor the task numbers.
                log.add([run.config.session_started(run.prefix)])
            result = run.run()
        results.append(result)
        if log is not None and args.out is not None:
            log.close()
            write_ledger_csv(result.model.ledger, args.out / f"prefetch-{prefetch}" / "ledger.csv")
    return results


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
