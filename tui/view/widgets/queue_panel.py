"""Provides QueuePanel: the broker's figures for the queue, each with its source."""

from __future__ import annotations

import math
from collections.abc import Callable

from rich.cells import cell_len, set_cell_size
from rich.console import RenderableType
from rich.text import Span, Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.geometry import Size
from textual.widget import Widget
from textual.widgets import Sparkline, Static

from tui.model.ledger import TAKEN, LostCause, MessageRecord
from tui.model.state import DERIVED, DERIVED_IGNORED, FROM_MANAGEMENT, Model
from tui.text import printable
from tui.view.widgets.dead_letters import DeadLetterPanel, Row, failure_rows


def queue_kind(model: Model, durable: bool) -> str:
    """The queue in a word or a few, for the header and the panel: ``durable``, ``transient``, ``quorum, limit 3``."""
    spec = model.spec
    return spec.describe() if spec.type.always_durable or spec.dead_letter else ("durable" if durable else "transient")


class QueueFigures(Widget):
    """The figures as a grid, laid out when drawn: for the width the widget has then."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: tuple[Row, ...] = ()
        """What the grid shows."""

    def show(self, rows: tuple[Row, ...]) -> None:
        """Draw these rows, unless they are drawn already."""
        if rows == self.rows:
            return
        # A new row count changes the panel's layout; new values in the same rows do not.
        layout = len(rows) != len(self.rows)
        self.rows = rows
        self.refresh(layout=layout)

    def render(self) -> Text:
        return figures(self.rows, self.size.width)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.rows)  # a line a row at any width: no need to lay them out to know


class QueuePanel(Vertical):
    """Ready, unacked, consumers, totals, balance and the done rate."""

    recorded = False
    """A replay's figures: their sources say they were recorded, not live."""

    def compose(self) -> ComposeResult:
        yield QueueFigures(id="queue-figures")
        yield Sparkline([0.0], id="rate", summary_function=max)
        yield Static(id="rate-label")
        yield Static(id="external")
        yield Static(id="broker-steps")
        yield DeadLetterPanel(id="dead-letters")
        yield Static(id="recent")

    def on_mount(self) -> None:
        self._shown: dict[str, object] = {}
        self.query_one("#broker-steps").display = False

    def _put(self, selector: str, key: object, build: Callable[[], RenderableType], *, layout: bool) -> None:
        """Update a part only when what it shows changed: each update costs a repaint, maybe a layout."""
        if self._shown.get(selector) == key:
            return
        self._shown[selector] = key
        self.query_one(selector, Static).update(build(), layout=layout)

    def show(self, model: Model, now: float, durable: bool, *, details: bool = True) -> None:
        """Show the figures; with ``details=False`` not the latest tasks' lifelines (drawn less often in a flood)."""
        recorded = self.recorded
        stale = model.stale(now)
        self.set_class(stale, "-stale")
        title = f"queue {printable(model.queue_name)} ({queue_kind(model, durable)})"
        if self._shown.get("title") != title:  # setting a title repaints the whole panel, even to the same title
            self._shown["title"] = title
            self.border_title = Text(title)  # a string title is read as markup; a queue's name is outside text
        rows = _rows(model, now, stale)
        self.query_one(QueueFigures).show(_as_recorded(rows) if recorded else rows)
        series = model.rate_series(now)
        sparkline = self.query_one("#rate", Sparkline)
        sparkline.display = any(series)
        if any(series) and sparkline.data != series:
            sparkline.data = series
        rate = f"{model.rate(now):.1f}"
        self._put(
            "#rate-label", rate,
            lambda: Text.assemble(("done/s ", "dim"), (rate, "bold"), (" (last 30 s above)", "dim")),
            layout=False,
        )  # fmt: skip
        external_key = (model.queue.external, model.queue.mgmt_refused, recorded)
        self._put("#external", external_key, lambda: _external(model, recorded), layout=True)
        steps = _broker_steps(model, now)
        if self._shown.get("#broker-steps", ()) != steps:
            self.query_one("#broker-steps").display = bool(steps)  # no blank line while there is nothing to tell
        self._put("#broker-steps", steps, lambda: Text("\n".join(steps), "yellow"), layout=True)
        self.query_one(DeadLetterPanel).show(model)
        if not details:
            return
        recent = model.ledger.recent(RECENT)
        key = tuple((r.msg_id, r.state, len(r.deliveries)) for r in recent)
        self._put("#recent", key, lambda: _recent(recent), layout=False)


HELD_NOW = "unacked, worker events"
AUTO_ACKED = "held by workers; broker forgot them"
"""Under auto ack the broker forgets a task when it delivers it: workers hold it, nothing counts it unacked."""
SHORTER = {
    FROM_MANAGEMENT: "mgmt API, ~5 s old",
    HELD_NOW: "worker events",
    AUTO_ACKED: "broker forgot them",
    DERIVED: "worker events",
    DERIVED_IGNORED: "worker events",
    "flagged by the broker": "broker's flag",
    "first seen at delivery": "seen at delivery",
    "went with the deleted queue": "queue deleted",
    "worked; the broker took it back": "taken back",
    **{cause.value: cause.short for cause in LostCause},
}
"""Fewer words for a source that does not fit the column: a figure's source is read whole, or not at all."""

RECENT = 14


def _rows(model: Model, now: float, stale: bool) -> tuple[Row, ...]:
    """The figures and their sources, as plain data (compared to skip repaints)."""
    q = model.queue
    ledger = model.ledger
    unacked, unacked_source = model.unacked(now)
    ours = model.our_consumers()
    age = "" if q.sampled is None else f", {now - q.sampled:.0f}s old" if stale else ""
    rows: list[Row] = [("ready", _n(q.ready), "bold", f"passive declare{age}")]
    missing = model.missing_from_queue(now)
    if missing:  # ours, gone from the queue, at none of our workers: taken by others? (waits for the figures)
        rows.append(("", "", "dim", f"{missing} of ours gone: checking"))
    rows.append(("unacked", str(unacked), "bold", unacked_source))
    if unacked_source == FROM_MANAGEMENT:
        rows.append(("held now", str(model.derived_unacked()), "bold", HELD_NOW))
    auto_acked = model.held_auto_acked()
    if auto_acked:  # the cards' "holds" counts them, unacked does not: say why the two differ
        rows.append(("auto-acked", str(auto_acked), "bold", AUTO_ACKED))
    others = "passive declare" if q.consumers is None else f"{ours} ours + {max(0, q.consumers - ours)} other"
    rows.append(("consumers", _n(q.consumers), "bold", others))
    theirs = model.others
    if theirs.management and theirs.channels and not q.mgmt_refused:
        # Their channels' message stats: what consumers we do not run took and acked since we came.
        rows.append(("others took", str(theirs.took), "bold", f"acked {theirs.acked}, {MGMT_OLD}"))
    rows.append(("published", str(ledger.published), "bold", f"confirmed {ledger.confirmed}"))
    if model.from_elsewhere:  # new_task in another terminal, or what was queued before we came
        rows.append(("from others", str(model.from_elsewhere), "bold", "first seen at delivery"))
    if ledger.taken:  # ours, gone from the queue to a consumer we do not run
        rows.append(("taken", str(ledger.taken), "bold", "by others, inferred"))
    rows.append(("done", str(ledger.done_messages), "bold", f"runs {ledger.done_runs}, duplicates {ledger.duplicates}"))
    rows.append(("redelivered", str(ledger.redeliveries), "bold", "flagged by the broker"))
    rows.append(("lost", str(ledger.lost), "bold red" if ledger.lost else "bold", _lost_source(model)))
    if ledger.ack_lost:  # finished after an ack timeout: the broker had handed the task out again
        rows.append(("ack lost", str(ledger.ack_lost), "bold red", "worked; the broker took it back"))
    rows += failure_rows(model, now)  # failures, the requeue loop, dead letters (none while all is well)
    if ledger.deleted:
        rows.append(("deleted", str(ledger.deleted), "bold", "went with the deleted queue"))
    if ledger.purged:
        rows.append(("purged", str(ledger.purged), "bold", "removed by purge"))
    published, accounted, holds = model.balance(now)
    verdict = {True: ("✓", "bold green"), False: ("✗", "bold red"), None: ("…", "dim")}[holds]
    relation = {True: "=", False: "≠", None: "→"}[holds]
    word = {True: "holds", False: "OFF", None: "moving"}[holds]
    uncounted = model.uncounted_others(now) if holds is None else 0
    if uncounted:
        # The passive declare counts them, nothing counts what they hold: say so rather than "moving".
        rows.append(("balance", verdict[0], verdict[1], f"can't close: {uncounted} other"))
        rows.append(("", "", "dim", "API ignored; can't count" if q.mgmt_refused else "no mgmt API to count it"))
    elif holds is None:
        # While tasks move the broker's figures trail ours (unacked by ~5 s), so ready + unacked + done would
        # count a finished task twice: show how many of those in have settled, from our records alone.
        rows.append(("balance", verdict[0], verdict[1], f"{word}: {model.settled()} of {published} settled"))
    else:
        rows.append(("balance", verdict[0], verdict[1], f"{word}: {published} in {relation} {accounted} out"))
    if stale:
        why = f"broker {model.broker_state}" + (f", attempt {model.broker_attempt}" if model.broker_attempt else "")
        if model.broker_message:
            why += f": {model.broker_message}"
        rows.append(("", "STALE", "bold red", why))
    return tuple(rows)


MGMT_OLD = "mgmt ~5 s old"
RECORDED_SOURCES = {
    FROM_MANAGEMENT: "recorded: management API",
    HELD_NOW: "recorded: worker events",
}
"""A replay's words for the sources that speak of now; the others name where a figure came from, then as now."""


def _as_recorded(rows: tuple[Row, ...]) -> tuple[Row, ...]:
    """The rows with no source that reads as live: a replay shows what was recorded."""
    return tuple(
        (label, value, style, RECORDED_SOURCES.get(source, source.replace(MGMT_OLD, "recorded mgmt")))
        for label, value, style, source in rows
    )


def figures(rows: tuple[Row, ...], width: int) -> Text:
    """The rows as a grid ``width`` cells wide, in the characters and styles rich's ``Table.grid(expand=True)`` drew.

    The table measured and rendered every cell on every draw (7 ms a draw in a
    flood); this is one pass over the rows. Labels (dim) and values (right-aligned)
    are as wide as their widest cell, at least 11 and 6, with a space after each;
    the sources (dim italic) take the rest, and spare cells go to the columns in
    proportion to their widths, as the table shared them out. A source too long
    for the width ends in an ellipsis at the edge, and the figures stay whole
    (there the table cut a long figure, and its ellipsis fell past the edge).
    """
    if not rows:
        return Text()
    widths = [
        max(11, max(cell_len(label) for label, _, _, _ in rows)) + 1,
        max(6, max(cell_len(value) for _, value, _, _ in rows)) + 1,
        max(1, max(cell_len(source) for _, _, _, source in rows)),
    ]
    spare = width - sum(widths)
    if spare > 0:
        widths = _widen(widths, spare)
    label_width, value_width, source_width = widths[0], widths[1] - 1, max(0, width - widths[0] - widths[1])
    lines: list[str] = []
    spans: list[Span] = []
    at = 0
    for label, value, style, source in rows:
        if cell_len(source) > source_width:
            source = SHORTER.get(source, source)
        if cell_len(source) > source_width:
            source = set_cell_size(source, source_width - 1) + "…" if source_width else ""
        label_cell = set_cell_size(label, label_width)
        value_cell = " " * (value_width - cell_len(value)) + value
        line = f"{label_cell}{value_cell} {set_cell_size(source, source_width)}"
        value_at = at + len(label_cell)
        source_at = value_at + len(value_cell) + 1
        if style == "dim":
            # A dim figure joins its label: Textual draws each span as a piece of its own, the table drew one.
            spans.append(Span(at, source_at - 1, style))
        else:
            spans += [Span(at, value_at, "dim"), Span(value_at, source_at - 1, style)]
        spans.append(Span(source_at, at + len(line), "dim italic"))
        lines.append(line)
        at += len(line) + 1
    return Text("\n".join(lines), spans=spans)


def _widen(widths: list[int], spare: int) -> list[int]:
    """Share ``spare`` cells out in proportion to the widths, rounding up, left to right (rich's ratio_distribute)."""
    total = sum(widths)
    widened = []
    for column_width in widths:
        share = math.ceil(column_width * spare / total)
        widened.append(column_width + share)
        spare -= share
        total -= column_width
    return widened


BROKER_STEPS_SHOWN = 120.0
"""Seconds a closed channel or connection stays told in the panel."""


def _broker_steps(model: Model, now: float) -> tuple[str, ...]:
    """What the broker did lately, in words: a cancelled consumer, a closed channel or connection."""
    lines: list[str] = []
    if model.cancelled:
        lines.append(model.cancel_note)
        back = [name for name, again in model.cancelled.items() if again]
        waiting = [name for name, again in model.cancelled.items() if not again]
        if back:
            lines.append(f"declared again, consuming: {' '.join(back)}")
        if waiting:
            lines.append(f"not consuming yet: {' '.join(waiting)}")
    closed = model.broker_closed
    if closed is not None and now - closed[0] < BROKER_STEPS_SHOWN:
        lines.append(f"the broker closed {closed[1]}: {closed[2]}")
    return tuple(lines)


def _lost_source(model: Model) -> str:
    """Why the lost ones are lost: one cause in words, several counted each (none yet: how one gets lost)."""
    by_cause = [(cause, count) for cause, count in model.ledger.lost_by.items() if count]
    if not by_cause:
        return LostCause.WORKER_DIED.value
    if len(by_cause) == 1:
        return by_cause[0][0].value
    return ", ".join(f"{count} {cause.short}" for cause, count in by_cause)


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _external(model: Model, recorded: bool = False) -> Text:
    external = model.queue.external
    refused = model.queue.mgmt_refused
    if refused:
        return Text(refused[0].upper() + refused[1:] + "\n", "dim")
    if not external:
        return Text("")
    source = "recorded: management API" if recorded else "management API"
    text = Text(f"other consumers ({source}):\n", "dim")
    for consumer in external[:4]:
        ack = "manual ack" if consumer.ack_required else "auto ack"
        text.append(
            f" {printable(consumer.connection[:28])} prefetch {consumer.prefetch} {ack} unacked {consumer.unacked}\n"
        )
    return text


_STATE_STYLE = {"done": "green", "lost": "bold red", "held": "cyan", "ready": "yellow"}
_STATE_STYLE[TAKEN] = "magenta"


def _recent(records: list[MessageRecord]) -> Text:
    """The newest tasks' lifelines: where each one went (F9 shows them all)."""
    if not records:
        return Text("")
    text = Text("latest tasks (F9: all, with details)\n", "dim")
    for record in records:
        text.append(printable(record.lifeline()) + "\n", _STATE_STYLE.get(record.state, ""))
    return text
