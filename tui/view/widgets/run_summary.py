"""Provides RunSummary: the last runs side by side on the main screen, and a one-line verdict.

One row for each of the last runs (``r2 odd-heavy  round-robin 0  4.0 s  w1 3.0/0.0  w2 1.0/2.0``):
its mode, its makespan and each worker's busy and idle-while-tasks-waited seconds,
as ``dispatch-lab compare`` prints them (``tui.model.runs`` computes both). The
fastest of the latest run's workload is green, and the verdict compares those
runs; a run still going says how far it is. Hidden until the first run. Rows: one per run shown (at most ``SHOWN``) and
one for the verdict, inside a border.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from tui.model.runs import Run, run_sentence
from tui.model.state import Model
from tui.text import printable

SHOWN = 3
"""Runs shown at once: the latest and the ones of the same workload before it."""


def summary_rows(runs: list[Run], alike: list[Run], now: float) -> list[tuple[Text, Text, Text, Text]]:
    """Per run: its title, its mode, its time and its workers' busy/idle (each a cell).

    The fastest of ``alike`` (the latest run and those of its workload before it) is green.
    """
    finished = [r.makespan for r in alike if not r.running]
    best = min(finished) if len(finished) > 1 else None
    rows = []
    for run in runs:
        if run.running:
            time = Text(f"{run.elapsed(now):.1f} s…", "yellow")
            workers = Text(f"running: {run.done}/{run.tasks} done", "yellow")
        else:
            time = Text(f"{run.makespan:.1f} s", "bold green" if run in alike and run.makespan == best else "bold")
            workers = Text()
            for index, w in enumerate(run.workers):
                workers.append("  " if index else "")
                workers.append(printable(w.name), "bold")
                workers.append(f" {w.busy:.1f}/")
                workers.append(f"{w.idle_while_waiting:.1f}", "bold red" if w.idle_while_waiting > 0.5 else "")
            if run.lost:
                workers.append(f"  lost {run.lost}", "bold red")
        rows.append((Text(printable(run.title), "bold"), Text(run.describe_mode()), time, workers))
    return rows


MAKESPAN_CELLS = 6
"""Room for a makespan such as ``12.3 s`` (a run still going may show a cut ``…``)."""


def render(model: Model, now: float) -> Group:
    """The rows and the verdict under them, as the widget draws them."""
    runs, alike = model.runs.all[-SHOWN:], model.runs.comparable(SHOWN)
    out = Table.grid(padding=(0, 2))
    # On a narrow screen rich shrinks every column alike, and the makespan went first: it keeps its width,
    # the title and the mode give way (cut with an ellipsis) before it.
    out.add_column(no_wrap=True, overflow="ellipsis")
    out.add_column(no_wrap=True, overflow="ellipsis")
    out.add_column(no_wrap=True, justify="right", min_width=MAKESPAN_CELLS)
    out.add_column(no_wrap=True, overflow="ellipsis")
    for row in summary_rows(runs, alike, now):
        out.add_row(*row)
    sentence = run_sentence(alike)
    return Group(out, Text(printable(sentence), "italic")) if sentence else Group(out)


class RunSummary(Static):
    """The last runs: makespan and each worker's busy/idle* seconds, like ``compare``; hidden before the first."""

    def on_mount(self) -> None:
        self.border_title = "runs · makespan · busy/idle* s per worker"
        self.border_subtitle = "idle* = idle while tasks waited"
        self.add_class("-empty")
        self._drawn: tuple[tuple[int, int, float | None, float], ...] = ()

    def show(self, model: Model, now: float) -> None:
        """Redraw when a run starts, ends or (while one runs) each tenth of a second it takes."""
        runs = model.runs.all[-SHOWN:]
        self.set_class(not runs, "-empty")
        key = tuple((r.number, r.done, r.finished, round(r.elapsed(now), 1) if r.running else 0) for r in runs)
        if key == self._drawn:
            return
        layout = len(key) != len(self._drawn) or any(a[2] != b[2] for a, b in zip(key, self._drawn, strict=False))
        self._drawn = key
        self.update(render(model, now), layout=layout)
