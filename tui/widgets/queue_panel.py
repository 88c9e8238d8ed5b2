"""Provides QueuePanel: the broker's figures for the queue, each with its source."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from tui.state import FROM_MANAGEMENT, Model


class QueuePanel(Vertical):
    """Ready, unacked, consumers, totals, balance and the done rate."""

    def compose(self) -> ComposeResult:
        yield Static(id="queue-figures")
        yield Sparkline([0.0], id="rate", summary_function=max)
        yield Static(id="rate-label")
        yield Static(id="external")
        yield Static(id="recent")

    def show(self, model: Model, now: float, durable: bool) -> None:
        stale = model.stale(now)
        self.set_class(stale, "-stale")
        self.border_title = f"queue {model.queue_name} ({'durable' if durable else 'transient'})"
        q = model.queue
        ledger = model.ledger
        unacked, unacked_source = model.unacked(now)
        ours = model.our_consumers()
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(style="dim", min_width=11, no_wrap=True)
        table.add_column(justify="right", min_width=6, style="bold", no_wrap=True)
        table.add_column(style="dim italic", no_wrap=True, overflow="ellipsis")
        age = "" if q.sampled is None else f", {now - q.sampled:.1f}s old" if stale else ""
        table.add_row("ready", _n(q.ready), f"passive declare{age}")
        table.add_row("unacked", str(unacked), unacked_source)
        if unacked_source == FROM_MANAGEMENT:
            table.add_row("held now", str(model.derived_unacked()), "live, from worker events")
        consumers = _n(q.consumers)
        others = "passive declare" if q.consumers is None else f"{ours} ours + {max(0, q.consumers - ours)} other"
        table.add_row("consumers", consumers, others)
        table.add_row("published", str(ledger.published), f"confirmed {ledger.confirmed}")
        table.add_row("done", str(ledger.done_messages), f"runs {ledger.done_runs}, duplicates {ledger.duplicates}")
        table.add_row("redelivered", str(ledger.redeliveries), "flagged by the broker")
        lost = Text(str(ledger.lost), style="bold red" if ledger.lost else "bold")
        table.add_row("lost", lost, "auto ack, worker died")
        if ledger.purged:
            table.add_row("purged", str(ledger.purged), "removed by purge")
        published, accounted, holds = model.balance(now)
        verdict = {True: Text("✓", "bold green"), False: Text("✗", "bold red"), None: Text("…", "dim")}[holds]
        relation = {True: "=", False: "≠", None: "→"}[holds]
        word = {True: "holds", False: "OFF", None: "moving"}[holds]
        table.add_row("balance", verdict, f"{word}: {published} in {relation} {accounted} out")
        if stale:
            state = model.broker_state
            why = f"broker {state}" + (f", attempt {model.broker_attempt}" if model.broker_attempt else "")
            table.add_row("", Text("STALE", "bold red"), why)
        self.query_one("#queue-figures", Static).update(table)
        series = model.rate_series(now)
        sparkline = self.query_one("#rate", Sparkline)
        sparkline.display = any(series)
        if any(series):
            sparkline.data = series
        self.query_one("#rate-label", Static).update(
            Text.assemble(("done/s ", "dim"), (f"{model.rate(now):.1f}", "bold"), (" (last 30 s above)", "dim"))
        )
        self.query_one("#external", Static).update(_external(model))
        self.query_one("#recent", Static).update(_recent(model))


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


def _recent(model: Model, limit: int = 14) -> Text:
    """The newest tasks' lifelines: where each one went (F9 shows them all)."""
    records = model.ledger.recent(limit)
    if not records:
        return Text("")
    text = Text("latest tasks (F9: all, with details)\n", "dim")
    for record in records:
        text.append(record.lifeline() + "\n", _STATE_STYLE.get(record.state, ""))
    return text
