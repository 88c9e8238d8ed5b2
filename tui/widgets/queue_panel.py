"""Provides QueuePanel: the broker's figures for the queue, each with its source."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from tui.ledger import MessageRecord
from tui.state import FROM_MANAGEMENT, Model


class QueuePanel(Vertical):
    """Ready, unacked, consumers, totals, balance and the done rate."""

    def compose(self) -> ComposeResult:
        yield Static(id="queue-figures")
        yield Sparkline([0.0], id="rate", summary_function=max)
        yield Static(id="rate-label")
        yield Static(id="external")
        yield Static(id="recent")

    def on_mount(self) -> None:
        self._shown: dict[str, object] = {}
        self._row_total = 0

    def _put(self, selector: str, key: object, build: Callable[[], RenderableType], *, layout: bool) -> None:
        """Update a part only when what it shows changed: each update costs a repaint, maybe a layout."""
        if self._shown.get(selector) == key:
            return
        self._shown[selector] = key
        self.query_one(selector, Static).update(build(), layout=layout)

    def show(self, model: Model, now: float, durable: bool) -> None:
        stale = model.stale(now)
        self.set_class(stale, "-stale")
        self.border_title = f"queue {model.queue_name} ({'durable' if durable else 'transient'})"
        rows = _rows(model, now, stale)
        # A new row count changes the panel's layout; new values in the same rows do not.
        layout, self._row_total = len(rows) != self._row_total, len(rows)
        self._put("#queue-figures", rows, lambda: _table(rows), layout=layout)
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
        self._put("#external", model.queue.external, lambda: _external(model), layout=True)
        recent = model.ledger.recent(RECENT)
        key = tuple((r.msg_id, r.state, len(r.deliveries)) for r in recent)
        self._put("#recent", key, lambda: _recent(recent), layout=False)


Row = tuple[str, str, str, str]
"""label, value, value style, source."""

RECENT = 14


def _rows(model: Model, now: float, stale: bool) -> tuple[Row, ...]:
    """The figures and their sources, as plain data (compared to skip repaints)."""
    q = model.queue
    ledger = model.ledger
    unacked, unacked_source = model.unacked(now)
    ours = model.our_consumers()
    age = "" if q.sampled is None else f", {now - q.sampled:.0f}s old" if stale else ""
    rows: list[Row] = [("ready", _n(q.ready), "bold", f"passive declare{age}")]
    rows.append(("unacked", str(unacked), "bold", unacked_source))
    if unacked_source == FROM_MANAGEMENT:
        rows.append(("held now", str(model.derived_unacked()), "bold", "live, from worker events"))
    others = "passive declare" if q.consumers is None else f"{ours} ours + {max(0, q.consumers - ours)} other"
    rows.append(("consumers", _n(q.consumers), "bold", others))
    rows.append(("published", str(ledger.published), "bold", f"confirmed {ledger.confirmed}"))
    rows.append(("done", str(ledger.done_messages), "bold", f"runs {ledger.done_runs}, duplicates {ledger.duplicates}"))
    rows.append(("redelivered", str(ledger.redeliveries), "bold", "flagged by the broker"))
    rows.append(("lost", str(ledger.lost), "bold red" if ledger.lost else "bold", "auto ack, worker died"))
    if ledger.purged:
        rows.append(("purged", str(ledger.purged), "bold", "removed by purge"))
    published, accounted, holds = model.balance(now)
    verdict = {True: ("✓", "bold green"), False: ("✗", "bold red"), None: ("…", "dim")}[holds]
    relation = {True: "=", False: "≠", None: "→"}[holds]
    word = {True: "holds", False: "OFF", None: "moving"}[holds]
    rows.append(("balance", verdict[0], verdict[1], f"{word}: {published} in {relation} {accounted} out"))
    if stale:
        why = f"broker {model.broker_state}" + (f", attempt {model.broker_attempt}" if model.broker_attempt else "")
        rows.append(("", "STALE", "bold red", why))
    return tuple(rows)


def _table(rows: tuple[Row, ...]) -> Table:
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(style="dim", min_width=11, no_wrap=True)
    table.add_column(justify="right", min_width=6, no_wrap=True)
    table.add_column(style="dim italic", no_wrap=True, overflow="ellipsis")
    for label, value, style, source in rows:
        table.add_row(label, Text(value, style), source)
    return table


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _external(model: Model) -> Text:
    external = model.queue.external
    if not external:
        return Text("")
    text = Text("other consumers (management API):\n", "dim")
    for consumer in external[:4]:
        ack = "manual ack" if consumer.ack_required else "auto ack"
        text.append(f" {consumer.connection[:28]} prefetch {consumer.prefetch} {ack} unacked {consumer.unacked}\n")
    return text


_STATE_STYLE = {"done": "green", "lost": "bold red", "held": "cyan", "ready": "yellow"}


def _recent(records: list[MessageRecord]) -> Text:
    """The newest tasks' lifelines: where each one went (F9 shows them all)."""
    if not records:
        return Text("")
    text = Text("latest tasks (F9: all, with details)\n", "dim")
    for record in records:
        text.append(record.lifeline() + "\n", _STATE_STYLE.get(record.state, ""))
    return text
