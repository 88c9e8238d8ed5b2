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


def table(figures: list[Figure], params: Params, machine: Machine, elapsed: float) -> Table:
    """The figures as one table; its title and caption state the machine and the parameters."""
    result = Table(
        title=(
            f"dispatch-lab benchmarks — {machine.cpu_count} cores (os.cpu_count), {machine.broker}, "
            f"Python {machine.python}, pika {machine.pika}"
        ),
        caption=f"{params.describe()} Took {elapsed:.0f} s.",
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
            _value(figure.ours, figure.unit),
            _value(figure.reference, figure.unit) if figure.measured else "",
            f"{figure.ratio:.3f}" if figure.ratio is not None else "",
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
            "pairs": params.pairs,
            "prefetches": list(params.prefetches),
            "consumers": params.consumers,
            "startup_workers": params.startup_workers,
            "startup_pairs": params.startup_pairs,
            "monitor_messages": params.monitor_messages,
            "monitor_pairs": params.monitor_pairs,
            "monitor_prefetch": params.monitor_prefetch,
            "monitor_hz": params.monitor_hz,
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
                "samples": f.samples,
                "note": f.note,
            }
            for f in figures
        ],
    }
