"""Provides the timeline lanes as text: one lane per worker on a shared time axis.

Pure: takes the model's lanes and a clock, returns Rich Text, so tests and
snapshots see exactly what the widget draws.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator

from rich.cells import cell_len, set_cell_size
from rich.text import Span, Text

from tui.model.state import Block, Model
from tui.text import printable

MIN_WINDOW = 20.0
"""Seconds the axis shows at least; it compresses beyond that..."""
MAX_WINDOW = 300.0
"""...up to this many seconds, then scrolls."""

_STYLES = {"done": "black on green", "returned": "black on cyan", "killed": "white on red", "exited": "white on red"}


def window(model: Model, now: float) -> tuple[float, float]:
    """The time span the lanes show: since the first event, compressed, then scrolling."""
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


def render(model: Model, now: float, width: int, name_width: int = 4, folded: Collection[str] = ()) -> Text:
    """All lanes with the worker names and a ruler underneath.

    The ``folded`` workers (dead a while, their cards folded into a line) share one lane, ``✗…``, at the bottom.
    """
    start, end = window(model, now)
    lane_width = max(10, width - name_width - 1)
    out = Text()
    for name, worker in model.workers.items():
        if name in folded:
            continue
        out.append(set_cell_size(printable(name), name_width) + " ", "bold" if worker.alive else "dim strike")
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
    out.append(" " * (name_width + 1))
    out.append_text(ruler(start, end, lane_width, origin))
    return out
