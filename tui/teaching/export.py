"""Provides exports: the ledger as CSV, and a session folder (events, ledger, screenshot)."""

from __future__ import annotations

import csv
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from tui.engine.session_log import SessionLog
from tui.model.ledger import Ledger, MessageRecord
from tui.text import printable

LEDGER_COLUMNS = ("msg_id", "label", "body", "published", "state", "deliveries", "done_count", "why_last", "lifeline")

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""A spreadsheet takes a cell that begins with one of these for a formula (OWASP's list for CSV injection)."""


def cell(text: str) -> str:
    """Outside text for a CSV cell: as it is, but a leading ``'`` keeps a spreadsheet from running it as a formula.

    The rest stays byte for byte (the csv module quotes line breaks and quotes); the
    views escape control characters, a data file keeps them.
    """
    return "'" + text if text.startswith(FORMULA_START) else text


def write_ledger_csv(ledger: Ledger | Iterable[MessageRecord], path: Path) -> int:
    """One row per message still in the ledger (or per record given); returns the row count."""
    records = ledger.records.values() if isinstance(ledger, Ledger) else ledger
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(LEDGER_COLUMNS)
        for record in records:
            writer.writerow(
                (
                    cell(record.msg_id),
                    cell(record.label()),
                    cell(record.body),
                    "" if record.published is None else f"{record.published:.6f}",
                    record.state,
                    len(record.deliveries),
                    record.done_count,
                    cell(record.deliveries[-1].why) if record.deliveries else "",
                    cell(record.lifeline()),
                )
            )
            rows += 1
    return rows


def session_folder(base: Path | None = None) -> Path:
    """A new folder for one export, named by the time."""
    root = base or Path.cwd() / "runs"
    name = time.strftime("session-%Y%m%d-%H%M%S")
    folder, copy = root / name, 1
    while folder.exists():  # two saves in one second: the second must not overwrite the first
        copy += 1
        folder = root / f"{name}-{copy}"
    folder.mkdir(parents=True)
    return folder


def save_session(folder: Path, records: list[MessageRecord], log: SessionLog | None) -> str:
    """Write the ledger (CSV) and the event log into ``folder``; what to tell the user. OSError when it cannot."""
    rows = write_ledger_csv(records, folder / "ledger.csv")
    if log is not None:
        log.flush()
        shutil.copyfile(log.path, folder / "events.jsonl")
    dropped = log.dropped if log is not None else 0
    cut = f" (the event log hit its size cap: the last {dropped:,} events are not in it)" if dropped else ""
    return f"Saved {rows} ledger rows, events and a screenshot to {printable(str(folder))}{cut}"


def not_saved(exc: OSError) -> str:
    """Which path could not be written and the system's reason, as text (a path may hold brackets)."""
    where = f" {printable(str(exc.filename))}" if exc.filename else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"Not saved: cannot write{where}: {reason}. Start with --runs-dir DIR to save elsewhere."
