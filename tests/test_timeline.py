"""The timeline's lanes and ruler as text: what each cell shows, in as few spans as the styles allow."""

from __future__ import annotations

from rich.text import Span, Text

from tui.model.state import LANE_BLOCKS, Block
from tui.view import timeline


def tiles(text: Text) -> bool:
    """The spans cover the text end to end, without gaps or overlaps, and neighbours differ in style."""
    ends = [0, *(span.end for span in text.spans)]
    starts = [span.start for span in text.spans] + [len(text.plain)]
    neighbours_differ = all(a.style != b.style for a, b in zip(text.spans, text.spans[1:], strict=False))
    return ends == starts and neighbours_differ


def test_a_lane_shows_each_task_as_a_run_of_cells_in_one_span() -> None:
    """One cell a second: done, redelivered (too short for its label), killed (✗ at its end), running, idle dots."""
    blocks = [
        Block(2.0, 6.0, "#1", False, "done"),
        Block(7.0, 9.0, "#2", True, "done"),
        Block(10.0, 14.0, "#3", False, "killed"),
        Block(16.0, None, "#4", False),
    ]
    lane = timeline.lane(blocks, 0.0, 20.0, 20, now=18.5)
    assert lane.plain == "··#1  ·  ·#3 ✗··  ··"
    assert lane.spans == [
        Span(0, 2, "dim"),
        Span(2, 6, "black on green"),
        Span(6, 7, "dim"),
        Span(7, 9, "black on yellow"),
        Span(9, 10, "dim"),
        Span(10, 13, "white on red"),
        Span(13, 14, "bold white on red"),
        Span(14, 16, "dim"),
        Span(16, 18, "bold black on white"),
        Span(18, 20, "dim"),
    ]


def test_a_flooded_lane_is_a_handful_of_spans_not_one_a_cell() -> None:
    """A lane's worth of sub-cell tasks (a flood) lands in the last cells: the rest is one run of dots."""
    now = 1000.0
    starts = [now - 0.5 + i * 0.001 for i in range(LANE_BLOCKS)]
    blocks = [Block(start, start + 0.0005, f"#{i}", False, "done") for i, start in enumerate(starts)]
    lane = timeline.lane(blocks, now - 20.0, now, 100, now)
    assert len(lane.plain) == 100 and lane.plain.startswith("·" * 97)
    assert tiles(lane) and len(lane.spans) <= 3, lane.spans


def test_a_lane_beyond_its_window_is_dots() -> None:
    assert timeline.lane([Block(0.0, 5.0, "#1", False, "done")], 10.0, 30.0, 10, 30.0).plain == "·" * 10


def test_the_ruler_marks_seconds_since_the_first_event_all_dim() -> None:
    ruler = timeline.ruler(100.0, 130.0, 75, origin=100.0)
    assert ruler.plain == "            |5s          |10s        |15s         |20s        |25s         "
    assert ruler.style == "dim" and {span.style for span in ruler.spans} == {"dim"}
    # One span a label, on the cells of its label.
    assert [ruler.plain[span.start : span.end] for span in ruler.spans] == ["|5s", "|10s", "|15s", "|20s", "|25s"]


def test_lane_names_show_the_ends_of_a_class_s_names_that_cut_alike() -> None:
    class_names = timeline.lane_names(["lab-pc01", "lab-pc02", "w1"], 4)
    assert class_names == {"lab-pc01": "pc01", "lab-pc02": "pc02", "w1": "w1  "}
    # Names whose first cells differ keep their heads, as before.
    assert timeline.lane_names(["alpha-1", "beta-2", "w1"], 4) == {"alpha-1": "alph", "beta-2": "beta", "w1": "w1  "}
