"""Provides the failure figures of the queue panel and DeadLetterPanel: what failed, looped and was dead-lettered."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.model.ledger import DEATH_REASONS
from tui.model.state import Model
from tui.text import printable

Row = tuple[str, str, str, str]
"""label, value, value style, source (as the queue panel's rows)."""
LETTERS_SHOWN = 4


def failure_rows(model: Model, now: float) -> list[Row]:
    """Failures, the requeue loop, rejections and dead letters, each with its source; none while all is well."""
    ledger = model.ledger
    rows: list[Row] = []
    if ledger.failures:
        rate = model.fail_rate(now)
        rows.append(("failures", str(ledger.failures), "bold red", f"worker events; {rate:.1f}/s now"))
    if ledger.requeued:
        loop = f"longest loop {ledger.max_failures}" if ledger.max_failures > 1 else "nack + requeue"
        rows.append(("requeued", str(ledger.requeued), "bold yellow", f"{loop}, worker events"))
    if ledger.rejected:
        rows.append(("rejected", str(ledger.rejected), "bold", "reject, no requeue"))
    limit, source = model.delivery_limit()
    if ledger.max_count or limit is not None:
        # The limit's source names the broker's version where it decides (4.0+: 20 by default).
        most = f"limit {limit} ({source})" if limit is not None else source
        rows.append(("max count", str(ledger.max_count), "bold", f"x-delivery-count; {most}"))
    dead = model.dead
    if dead.count is not None and (dead.count or ledger.dead_lettered or dead.moved):
        rows.append(("dead letters", str(dead.count), "bold red" if dead.count else "bold",
                     f"passive declare; ours {ledger.dead_lettered}"))  # fmt: skip
    elif ledger.dead_lettered:
        rows.append(("dead letters", str(ledger.dead_lettered), "bold red", "inferred: worker events"))
    if ledger.dropped:
        rows.append(("dropped", str(ledger.dropped), "bold red", "no dead-letter queue (inferred)"))
    return rows


def dead_letter_text(model: Model) -> Text:
    """The dead-letter queue: how many, the first ids with the broker's reason, and the key that moves them back."""
    dead = model.dead
    if not dead.queue:
        return Text("")
    count = "?" if dead.count is None else str(dead.count)
    text = Text(f"dead letters in {printable(dead.queue)}: ", "dim")
    text.append(count, "bold red" if dead.count else "bold")
    for letter in dead.letters[:LETTERS_SHOWN]:
        record = model.ledger.records.get(letter.msg_id or "")
        label = record.label() if record is not None else (letter.msg_id or "(no id)")
        reason = DEATH_REASONS.get(letter.reason, letter.reason) or "no reason given"
        times = f" x{letter.times}" if letter.times > 1 else ""
        text.append(f"\n {printable(label)} {reason}{times}", "red")
    if len(dead.letters) > LETTERS_SHOWN:
        text.append(f"\n … {len(dead.letters) - LETTERS_SHOWN} more (F9)", "dim")
    if dead.count:
        text.append("\nCtrl+R moves them back to the work queue", "dim")
    if dead.error:
        text.append(f"\n{printable(dead.error)}", "bold red")
    return text


class DeadLetterPanel(Static):
    """The dead-letter queue's few lines; hidden when the queue has none declared."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._key: object = None
        self.display = False

    def show(self, model: Model) -> None:
        dead = model.dead
        key = (dead.queue, dead.count, dead.letters, dead.error)
        if self._key == key:
            return
        self._key = key
        self.display = bool(dead.queue)
        self.update(dead_letter_text(model))
