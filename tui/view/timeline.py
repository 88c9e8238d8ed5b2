"""Provides the timeline lanes as text: one lane per worker on a shared time axis.

Pure: takes the model's lanes and a clock, returns Rich Text, so tests and
snapshots see exactly what the widget draws.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence

from rich.cells import cell_len, set_cell_size
from rich.text import Span, Text

from tui.model.runs import Run
from tui.model.state import Block, Model
from tui.text import printable

MIN_WINDOW = 20.0
"""Seconds the axis shows at least; it compresses beyond that..."""
MAX_WINDOW = 300.0
"""...up to this many seconds, then scrolls."""

_STYLES = {"done": "black on green", "returned": "black on cyan", "killed": "white on red", "exited": "white on red"}


RUN_PADDING = 0.03
"""Of a run's span, shown before and after it when the timeline shows that run alone."""
RUN_MIN_SPAN = 4.0
"""Seconds a run's window spans at least: a run of a few hundred ms still reads as lanes."""


def window(model: Model, now: float, run: Run | None = None) -> tuple[float, float]:
    """The time span the lanes show: since the first event, compressed, then scrolling; or ``run`` alone."""
    if run is not None:
        span = max((run.finished if run.finished is not None else now) - run.started, RUN_MIN_SPAN)
        return run.started - span * RUN_PADDING, run.started + span * (1 + RUN_PADDING)
    first = model.first_ts if model.first_ts is not None else now
    if now - first <= MIN_WINDOW:
        return first, first + MIN_WINDOW  # the right-hand side is still to come
    span = min(now - first, MAX_WINDOW)
    return now - span, now


def lane(blocks: Iterable[Block], start: float, end: float, width: int, now: float) -> Text:
    """One worker's lane: a coloured run per task, labelled when it fits, dots while idle."""
    chars = ["·"] * width
    styles = ["dim"] * width
    scale = width / (end - start) if end > start else 0.0
    for block in blocks:
        stop = block.end if block.end is not None else now
        if stop < start:
            continue
        first = max(0, int((block.start - start) * scale))
        last = min(width - 1, max(first, int((stop - start) * scale) - 1))
        style = _STYLES.get(block.outcome, "black on yellow") if block.end is not None else "bold black on white"
        if block.redelivered:
            style = style.replace("on green", "on yellow")
        label = ("↻" if block.redelivered else "") + printable(block.label)  # another publisher's message id
        if cell_len(label) != len(label):  # the lane is a cell a character: a label stops at a wide character
            label = label[: next(i for i, char in enumerate(label) if cell_len(char) != 1)]
        size = last - first + 1
        if size > 0:
            chars[first : last + 1] = label.ljust(size) if size > len(label) else " " * size
            styles[first : last + 1] = [style] * size
        if block.outcome in ("killed", "exited"):
            chars[last], styles[last] = "✗", "bold white on red"
    return Text("".join(chars), spans=list(_runs(styles)))


def _runs(styles: list[str]) -> Iterator[Span]:
    """One span per run of cells in the same style: a span per cell costs every later step a span."""
    run = 0
    for column in range(1, len(styles) + 1):
        if column == len(styles) or styles[column] != styles[run]:
            yield Span(run, column, styles[run])
            run = column


def ruler(start: float, end: float, width: int, origin: float) -> Text:
    """Tick marks in seconds since ``origin`` (the session's first event)."""
    span = end - start
    step = next(s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600) if span / s <= width / 8)
    chars = [" "] * width
    labels: list[Span] = []
    tick = (int((start - origin) / step) + 1) * step
    while origin + tick < end:
        column = int((origin + tick - start) / span * width)
        label = f"|{tick}s"
        if column + len(label) <= width:
            chars[column : column + len(label)] = label
            # Dim on dim changes no cell; a span a label keeps the pieces the ruler was always drawn in.
            labels.append(Span(column, column + len(label), "dim"))
        tick += step
    return Text("".join(chars), "dim", spans=labels)


def run_marks(runs: Sequence[Run], start: float, end: float, width: int) -> Text:
    """A row naming each run where it begins (``▏r2 odd-heavy · fair 1``), shorter where the next one follows."""
    scale = width / (end - start) if end > start else 0.0
    shown = [(int((r.started - start) * scale), r) for r in runs if start <= r.started < end]
    chars = [" "] * width
    spans: list[Span] = []
    for index, (column, run) in enumerate(shown):
        room = (shown[index + 1][0] if index + 1 < len(shown) else width) - column - 1
        title = printable(run.title)
        if cell_len(title) != len(title):  # a cell a character, as in the lanes
            title = title[: next(i for i, char in enumerate(title) if cell_len(char) != 1)]
        # The longest that fits: with its mode, its title alone, its number alone.
        fits = [c for c in (f"▏{title} · {run.describe_mode()}", f"▏{title}", f"▏r{run.number}") if len(c) <= room]
        label = fits[0] if fits else "▏"[: max(0, room)]
        chars[column : column + len(label)] = label
        spans.append(Span(column, column + len(label), "bold green" if run.running else "bold"))
    return Text("".join(chars), spans=spans)


def lane_names(names: Collection[str], width: int) -> dict[str, str]:
    """Each worker's lane label: its name cut to ``width`` cells, or its end when the cut heads would look alike.

    A class's workers are named after their machines (lab-pc01, lab-pc02, ...): cut to four
    cells every lane read "lab-"; their ends (pc01, pc02) tell them apart.
    """
    shown = {name: printable(name) for name in names}
    heads = [set_cell_size(text, width) for text in shown.values() if cell_len(text) > width]
    if len(heads) == len(set(heads)):
        return {name: set_cell_size(text, width) for name, text in shown.items()}
    return {
        name: set_cell_size(text[-width:] if cell_len(text) > width and len(text) == cell_len(text) else text, width)
        for name, text in shown.items()
    }


def render(
    model: Model, now: float, width: int, name_width: int = 4, run: Run | None = None, folded: Collection[str] = ()
) -> Text:
    """All lanes with the worker names and a ruler underneath; a row of run marks above them once there are runs.

    With ``run``: that run alone, and only the workers present in it. The ``folded`` workers (dead a while,
    their cards folded into a line) share one lane, ``✗…``, at the bottom.
    """
    start, end = window(model, now, run)
    lane_width = max(10, width - name_width - 1)
    out = Text()
    if model.runs.all:
        out.append(" " * (name_width + 1))
        out.append_text(run_marks(model.runs.all, start, end, lane_width))
        out.append("\n")
    labels = lane_names(model.workers, name_width)
    for name, worker in model.workers.items():
        if name in folded or (run is not None and name not in run.figures):
            continue
        out.append(labels[name] + " ", "bold" if worker.alive else "dim strike")
        out.append_text(lane(worker.lane, start, end, lane_width, now))
        out.append("\n")
    names = [name for name in model.workers if name in folded]
    gone = [block for name in names for block in model.workers[name].lane]
    if gone:
        label, style = (printable(names[0]), "dim strike") if len(names) == 1 else ("✗…", "dim")  # one keeps its name
        out.append(set_cell_size(label, name_width) + " ", style)
        out.append_text(lane(sorted(gone, key=lambda block: block.start), start, end, lane_width, now))
        out.append("\n")
    origin = model.first_ts if model.first_ts is not None else start
    if run is not None:  # seconds into the run, as its makespan counts them
        origin = run.first_published if run.first_published is not None else run.started
    out.append(" " * (name_width + 1))
    out.append_text(ruler(start, end, lane_width, origin))
    return out
