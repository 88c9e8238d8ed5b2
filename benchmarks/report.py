"""Provides the benchmark report: one rich table, or the same figures as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich import box
from rich.table import Table

from benchmarks.figures import Figure, Params


@dataclass(frozen=True)
class Machine:
    """Where the figures were measured."""

    cpu_count: int | None
    broker: str
    python: str
    pika: str


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "not measured yet"
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:,.0f} {unit}"


def _cpu(us: float | None) -> str:
    return "" if us is None else f"\n{us:,.0f} µs CPU/msg"


def _ratio(figure: Figure) -> str:
    if figure.ratio is None:
        return ""
    pairs = figure.samples.get("ratio", [])
    if len(pairs) < 2:
        return f"{figure.ratio:.3f}"
    return f"{figure.ratio:.3f}\n{min(pairs):.2f}–{max(pairs):.2f}"


def table(figures: list[Figure], params: Params, machine: Machine, elapsed: float) -> Table:
    """The figures as one table; its title and caption state the machine and the parameters."""
    result = Table(
        title=(
            f"dispatch-lab benchmarks — {machine.cpu_count} cores (os.cpu_count), {machine.broker}, "
            f"Python {machine.python}, pika {machine.pika}"
        ),
        caption=(
            f"{params.describe()} Under each ratio: the lowest and highest per-pair ratio. "
            "µs CPU/msg: the consumer processes' CPU from their ready line to the last ack, plus the "
            "benchmark's reading of their output, per message (steadier than msg/s on a shared machine; "
            "no target). Our workers' events are read in chunks as the dashboard reads them and decoded "
            f"after each run (that cost is in the log and the JSON). Took {elapsed:.0f} s."
        ),
        box=box.SIMPLE_HEAVY,
        caption_justify="left",
    )
    result.add_column("Figure", no_wrap=True)
    result.add_column("What was measured", ratio=1)
    result.add_column("Ours", justify="right", no_wrap=True)
    result.add_column("Reference", justify="right", no_wrap=True)
    result.add_column("Ratio", justify="right", no_wrap=True)
    result.add_column("Target", justify="right", no_wrap=True)
    result.add_column("Met", justify="center", no_wrap=True)
    for figure in figures:
        met = figure.met
        result.add_row(
            figure.key,
            figure.what,
            _value(figure.ours, figure.unit) + _cpu(figure.cpu_ours),
            (_value(figure.reference, figure.unit) + _cpu(figure.cpu_reference)) if figure.measured else "",
            _ratio(figure),
            str(figure.target) if figure.target else "",
            "" if met is None else ("[green]yes[/]" if met else "[red]no[/]"),
        )
    return result


def as_json(figures: list[Figure], params: Params, machine: Machine, elapsed: float) -> dict[str, Any]:
    """The same content as the table, for tools and tests."""
    return {
        "version": 1,
        "profile": params.profile,
        "parameters": {
            "messages": params.messages,
            "windowed_messages": params.windowed_messages,
            "pairs": params.pairs,
            "windowed_pairs": params.windowed_pairs,
            "prefetches": list(params.prefetches),
            "consumers": params.consumers,
            "startup_workers": params.startup_workers,
            "startup_pairs": params.startup_pairs,
            "monitor_messages": params.monitor_messages,
            "monitor_pairs": params.monitor_pairs,
            "monitor_prefetch": params.monitor_prefetch,
            "monitor_hz": params.monitor_hz,
            "publish_messages": params.publish_messages,
            "publish_pairs": params.publish_pairs,
            "description": params.describe(),
        },
        "machine": {
            "cpu_count": machine.cpu_count,
            "broker": machine.broker,
            "python": machine.python,
            "pika": machine.pika,
        },
        "elapsed_s": round(elapsed, 3),
        "figures": [
            {
                "key": f.key,
                "what": f.what,
                "unit": f.unit,
                "measured": f.measured,
                "ours": f.ours,
                "reference": f.reference,
                "ratio": f.ratio,
                "target": {"op": f.target.op, "value": f.target.value} if f.target else None,
                "met": f.met,
                "cpu_us_per_msg": (
                    {"ours": f.cpu_ours, "reference": f.cpu_reference} if f.cpu_ours is not None else None
                ),
                "samples": f.samples,
                "note": f.note,
            }
            for f in figures
        ],
    }
