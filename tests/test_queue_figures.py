"""The queue figures laid out by hand look as rich's Table.grid drew them, at a fraction of the cost."""

from __future__ import annotations

import pytest
from rich.console import Console, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text

from tui.model.ledger import LostCause
from tui.model.state import FROM_MANAGEMENT
from tui.view.widgets.queue_panel import AUTO_ACKED, HELD_NOW, Row, figures

PANEL = 44
"""The figures' width in the queue panel (48 columns less its border and padding)."""

MID_RUN: tuple[Row, ...] = (
    ("ready", "0", "bold", "passive declare"),
    ("unacked", "3", "bold", "live, from worker events"),
    ("consumers", "2", "bold", "2 ours + 0 other"),
    ("published", "6", "bold", "confirmed 6"),
    ("done", "4", "bold", "runs 4, duplicates 0"),
    ("redelivered", "1", "bold", "flagged by the broker"),
    ("lost", "0", "bold", "auto ack, worker died"),
    ("balance", "…", "dim", "moving: 6 in → 7 out"),
)
TROUBLE: tuple[Row, ...] = (
    ("ready", "-", "bold", "passive declare, 9s old"),
    ("lost", "12", "bold red", "auto ack, worker died"),
    ("purged", "40", "bold", "removed by purge"),
    ("balance", "✗", "bold red", "OFF: 52 in ≠ 50 out"),
    ("", "STALE", "bold red", "broker reconnecting"),
)
MILLIONS: tuple[Row, ...] = (
    ("published", "1250000", "bold", "confirmed 1250000"),
    ("done", "1249000", "bold", "runs 1249000"),
    ("balance", "✓", "bold green", "holds"),
)


def old_table(rows: tuple[Row, ...]) -> Table:
    """The grid the panel drew before: the picture to keep."""
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(style="dim", min_width=11, no_wrap=True)
    table.add_column(justify="right", min_width=6, no_wrap=True)
    table.add_column(style="dim italic", no_wrap=True, overflow="ellipsis")
    for label, value, style, source in rows:
        table.add_row(label, Text(value, style), source)
    return table


def cells(renderable: RenderableType, width: int) -> list[list[tuple[str, Style]]]:
    """Each line as (character, style) per cell, however the segments fall."""
    console = Console(width=width, force_terminal=True, color_system="truecolor")
    lines = console.render_lines(renderable, console.options.update(width=width, highlight=False), pad=False)
    return [[(char, segment.style or Style.null()) for segment in line for char in segment.text] for line in lines]


@pytest.mark.parametrize(
    ("rows", "width"),
    [(MID_RUN, PANEL), (TROUBLE, PANEL), (MILLIONS, PANEL), (MID_RUN, 60), (TROUBLE, 75), (MID_RUN[:1], 40)],
    ids=["mid-run", "trouble", "millions", "wider", "much wider", "one row"],
)
def test_the_figures_are_the_tables_characters_and_styles(rows: tuple[Row, ...], width: int) -> None:
    """Same cells as the table at any width the rows fit in: spare cells shared out as the table did."""
    drawn = cells(figures(rows, width), width)
    assert drawn == cells(old_table(rows), width)
    assert [len(line) for line in drawn] == [width] * len(rows)


def test_a_source_too_long_for_the_panel_is_cut_with_an_ellipsis_at_its_edge() -> None:
    # A source with no shorter words (the age of a stale figure); those with them: the test below.
    rows = (*MID_RUN[:1], ("unacked", "3", "bold", "passive declare, 12345s old"), *MID_RUN[2:])
    lines = figures(rows, PANEL).plain.splitlines()
    assert lines[1] == "unacked     " + "     3 " + "passive declare, 12345s …"
    assert {len(line) for line in lines} == {PANEL}
    # The table drew the same cells up to the last; its own ellipsis fell past the edge.
    drawn, table = cells(figures(rows, PANEL), PANEL), cells(old_table(rows), PANEL)
    assert drawn[:1] + drawn[2:] == table[:1] + table[2:]
    assert drawn[1][:-1] == table[1][:-1] and drawn[1][-1][0] == "…" and table[1][-1][0] == "o"


def test_a_big_figure_keeps_all_its_digits_when_the_sources_overflow() -> None:
    """The table shrank the figures' column too and cut a figure to "12345…"; the sources give way instead."""
    rows = (("published", "1250000", "bold", "confirmed 1250000, and more to say"), MID_RUN[0])
    lines = figures(rows, PANEL).plain.splitlines()
    assert lines[0] == "published   " + "1250000 " + "confirmed 1250000, and …"
    assert lines[1] == "ready       " + "      0 " + "passive declare         "
    assert {len(line) for line in lines} == {PANEL}


def test_no_rows_no_text() -> None:
    assert figures((), PANEL).plain == ""


def test_the_lag_label_is_read_whole_in_fewer_words_where_the_column_is_narrow() -> None:
    """Issue 14: ``unacked 3 management API, ~5 s beh…`` beside ``held now 1``: never cut, shortened."""
    rows = (
        ("unacked", "3", "bold", FROM_MANAGEMENT),
        ("held now", "1", "bold", HELD_NOW),
        ("auto-acked", "6", "bold", AUTO_ACKED),
        ("lost", "6", "bold red", LostCause.TRANSIENT_QUEUE.value),
    )
    narrow = figures(rows, PANEL).plain.splitlines()
    assert "…" not in "".join(narrow), narrow
    assert narrow[0].rstrip().endswith(" 3 mgmt API, ~5 s old"), narrow
    wide = figures(rows, 80).plain.splitlines()
    assert all(line.rstrip().endswith(f" {source}") for line, (_, _, _, source) in zip(wide, rows, strict=True)), wide
