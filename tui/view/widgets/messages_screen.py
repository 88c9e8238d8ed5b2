"""Provides MessagesScreen: the message ledger, each task's lifeline, lost ids and duplicates."""

from __future__ import annotations

from collections.abc import Callable

from rich import box
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from tui.model.ledger import LOST, TAKEN, Delivery, MessageRecord
from tui.model.state import Model
from tui.text import printable, quoted
from tui.view.widgets.dead_letters import failure_rows

ROWS = 300
STATE_STYLES = {"done": "green", "lost": "bold red", "held": "cyan", "ready": "yellow", "done, never acked": "red"}
STATE_STYLES[TAKEN] = "magenta"


class MessagesScreen(ModalScreen[None]):
    """Every recent task and where it went; pick one to see its whole story."""

    BINDINGS = [Binding("escape,f9", "close", "Close")]

    def __init__(self, model: Model, clock: Callable[[], float]) -> None:
        super().__init__()
        self.model = model
        self.clock = clock
        self._shown: list[str] = []
        self._selected: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="messages-body"):
            yield Static(id="ledger-summary")
            yield DataTable(id="messages", cursor_type="row", zebra_stripes=True)
            yield Static(id="message-detail")

    def on_mount(self) -> None:
        body = self.query_one("#messages-body")
        body.border_title = "messages: every recent task and where it went"
        body.border_subtitle = "↑↓ a task's story · Esc or F9 close"
        table = self.query_one(DataTable)
        table.add_columns("task", "state", "deliveries", "why", "lifeline")
        self.refresh_ledger()
        self.set_interval(0.5, self.refresh_ledger)
        table.focus()

    def refresh_ledger(self) -> None:
        ledger = self.model.ledger
        summary = Text.assemble(
            ("published ", "dim"), (f"{ledger.published}  ", "bold"),
            ("done ", "dim"), (f"{ledger.done_messages}  ", "bold green"),
            ("redeliveries ", "dim"), (f"{ledger.redeliveries}  ", "bold yellow"),
            ("duplicates ", "dim"), (f"{ledger.duplicates}  ", "bold"),
            ("lost ", "dim"), (f"{ledger.lost}  ", "bold red" if ledger.lost else "bold"),
            ("evicted (finished, over the cap) ", "dim"), (f"{ledger.evicted}", "bold"),
        )  # fmt: skip
        failures = failure_rows(self.model, self.clock())  # the queue panel's rows: one home for their figures
        if failures:
            summary.append("\n")
            for label, figure, style, _source in failures:
                summary.append_text(Text.assemble((f"{label} ", "dim"), (f"{figure}  ", style)))
        if ledger.lost_ids:
            summary.append("\nlost: " + self._lost_by_cause(list(ledger.lost_ids)[-40:]), "red")
        if ledger.duplicate_ids:
            summary.append(
                "\nprocessed twice: " + " ".join(self._label(i) for i in list(ledger.duplicate_ids)[-40:]), "yellow"
            )
        self.query_one("#ledger-summary", Static).update(summary)
        records = ledger.recent(ROWS)
        ids = [r.msg_id for r in records]
        table = self.query_one(DataTable)
        if ids != self._shown:
            cursor = table.cursor_row
            table.clear()
            for record in records:
                table.add_row(*self._row(record), key=record.msg_id)
            self._shown = ids
            if records:
                table.move_cursor(row=min(cursor, len(records) - 1))
        else:
            for record in records:
                for column, value in zip(table.ordered_columns, self._row(record), strict=True):
                    table.update_cell(record.msg_id, column.key, value)
        self._show_detail()

    def _lost_by_cause(self, ids: list[str]) -> str:
        """``#1 #3 (auto ack, worker died); #6 (transient queue, broker restart)``: each lost id with its cause."""
        groups: dict[str, list[str]] = {}
        for msg_id in ids:
            record = self.model.ledger.records.get(msg_id)
            cause = (
                record.lost_cause.value if record is not None and record.lost_cause is not None else "record evicted"
            )
            groups.setdefault(cause, []).append(self._label(msg_id))
        return "; ".join(f"{' '.join(labels)} ({cause})" for cause, labels in groups.items())

    def _label(self, msg_id: str) -> str:
        record = self.model.ledger.records.get(msg_id)
        return printable(record.label() if record else msg_id)

    @staticmethod
    def _row(record: MessageRecord) -> tuple[Text, Text, str, Text, Text]:
        """The table's cells: Text, as a string cell is read as markup and ids and names come from outside."""
        # Why it ended where it is (lost, purged, deleted) when it did not end done; else why it was last delivered.
        why = record.cause() or (record.deliveries[-1].why if record.deliveries else "")
        return (
            Text(printable(record.label()), "bold"),
            Text(record.state, STATE_STYLES.get(record.state, "")),
            str(len(record.deliveries)),
            Text(printable(why)),
            Text(printable(record.lifeline())),
        )

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._selected = event.row_key.value if event.row_key else None
        self._show_detail()

    def _show_detail(self) -> None:
        record = self.model.ledger.records.get(self._selected or "")
        detail = self.query_one("#message-detail", Static)
        if record is None:
            detail.update(Text("Select a task to see its deliveries.", "dim"))
            return
        origin = record.published or (record.deliveries[0].ts if record.deliveries else 0.0)
        # Text throughout: a rich Table reads string titles and cells as markup.
        table = Table(
            title=Text(
                f"{printable(record.label())} {quoted(record.body)}: {printable(record.lifeline())}", "table.title"
            ),
            expand=True,
            box=box.SIMPLE_HEAD,
            padding=(0, 1),
        )
        for column in ("worker", "at", "redelivered", "why", "ack", "outcome", "waited", "worked"):
            table.add_column(column)
        for d in record.deliveries:
            waited, worked = timings(d)
            redelivered = ("yes" if d.redelivered else "no") + ("" if d.count is None else f", count {d.count}")
            table.add_row(Text(printable(d.worker)), f"+{d.ts - origin:.2f}s", redelivered,
                          Text(printable(d.why)), Text(printable(d.ack)), Text(printable(d.outcome or "in progress")),
                          waited, worked)  # fmt: skip
        notes = ["waited = in the worker's prefetch window, behind another task; worked = the task's own time"]
        if record.elided:
            notes.insert(0, f"{record.elided} deliveries between the first and the latest are counted, not listed")
        if record.state == LOST and record.lost_cause is not None:
            notes.insert(0, record.lost_cause.sentence)
        elif record.cause():
            notes.insert(0, f"{record.state}: {printable(record.cause())}")
        table.caption = Text("\n".join(notes))
        detail.update(table)

    def action_close(self) -> None:
        self.dismiss(None)


def timings(delivery: Delivery) -> tuple[str, str]:
    """How long a delivery waited in the worker's prefetch window, and how long it was worked on ("…" while unknown).

    A delivery given back (or lost) before its work began only waited; one still waiting has no end yet.
    """
    if delivery.started is None:
        waited = f"{delivery.ended - delivery.ts:.2f}s" if delivery.ended is not None else "…"
        return waited, "-" if delivery.ended is not None else "…"
    waited = f"{delivery.started - delivery.ts:.2f}s"
    return waited, f"{delivery.ended - delivery.started:.2f}s" if delivery.ended is not None else "…"
