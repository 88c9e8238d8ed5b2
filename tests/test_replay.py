"""``dispatch-lab replay``: a saved session reopens read-only, with the figures it was saved with.

No broker: the command-line errors run as a subprocess; a valid log is opened
by ``replay_main`` itself, whose app is then driven headless with Pilot.
"""

from __future__ import annotations

import asyncio
import csv
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from textual.widgets import Static

from tests.helpers import run_module
from tests.recordings import PREFIX, T0, replay, session_kill
from tui.engine.session_log import SessionLog, encode
from tui.launch import replay_main
from tui.model import observations as obs
from tui.model.state import KILLED, Model
from tui.teaching import export
from tui.view import timeline
from tui.view.app import DispatchLab
from tui.view.widgets.lab_header import LabHeader
from tui.view.widgets.messages_screen import MessagesScreen
from tui.view.widgets.timeline_view import TimelineView
from tui.view.widgets.worker_card import WorkerCard
from workers.settings import AckMode, DispatchMode

MODE = DispatchMode(0, AckMode.MANUAL)
STARTED = obs.SessionStarted(T0, "lesson_queue", PREFIX, 0, "manual", True, "amqp://guest:***@rabbit:5672/%2F")


# ----- bad input: one line, exit 2


def replay_cli(path: Path) -> tuple[int, list[str], str]:
    result = run_module("tui.cli", ["replay", str(path)], None, timeout=20)
    assert "Traceback" not in result.output, result.output
    assert result.stdout == "", result.stdout
    return result.code, [line for line in result.stderr.splitlines() if line.strip()], result.output


def test_a_missing_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    code, lines, output = replay_cli(tmp_path / "nowhere.jsonl")
    assert code == 2 and lines == [f"dispatch-lab replay: no session log at {tmp_path / 'nowhere.jsonl'}"], output


def test_a_folder_without_a_log_is_one_line_and_exit_2(tmp_path: Path) -> None:
    code, lines, output = replay_cli(tmp_path)
    assert code == 2 and lines == [f"dispatch-lab replay: no session log at {tmp_path / 'events.jsonl'}"], output


@pytest.mark.parametrize("content", ["", "\n\n", "not a log\n{}\n[1]\n"], ids=["empty", "blank lines", "no events"])
def test_a_log_with_no_events_is_one_line_and_exit_2(tmp_path: Path, content: str) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(content, encoding="utf-8")
    code, lines, output = replay_cli(path)
    assert code == 2 and lines == [f"dispatch-lab replay: {path} holds no events"], output


# ----- a valid log, opened by replay_main


def saved_session(folder: Path) -> Path:
    """The kill session as the dashboard saves it: SessionStarted first, then everything it folded."""
    log = SessionLog(folder / "events.jsonl")
    log.start()
    log.add([STARTED])
    log.add(session_kill().events)
    log.close()
    return log.path


def opened_by_replay_main(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> DispatchLab:
    """The app ``replay_main`` builds, caught instead of run in this terminal."""
    built: list[DispatchLab] = []

    def catch(self: DispatchLab, *args: Any, **kwargs: Any) -> None:
        built.append(self)

    monkeypatch.setattr(DispatchLab, "run", catch)
    monkeypatch.setattr("tui.launch.full_screen_refusal", lambda *args: None)  # pytest holds the terminal
    assert replay_main(argv) == 0
    assert len(built) == 1
    return built[0]


@dataclass
class Seen:
    header: str
    cards: dict[str, str]
    timeline: str
    ledger_screen: bool
    summary: str


async def look_at(app: DispatchLab) -> Seen:
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        header = str(app.query_one(LabHeader).content)
        cards = {
            card.worker_name: "\n".join(str(s.content) for s in card.query(Static)) for card in app.query(WorkerCard)
        }
        timeline_text = str(app.query_one(TimelineView).content)
        await pilot.press("f9")
        await pilot.pause()
        screen = app.screen
        summary = str(screen.query_one("#ledger-summary", Static).content) if isinstance(screen, MessagesScreen) else ""
        return Seen(header, cards, timeline_text, isinstance(screen, MessagesScreen), summary)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("by", ["file", "folder"])
def test_a_saved_session_replays_read_only_with_its_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by: str
) -> None:
    path = saved_session(tmp_path)
    app = opened_by_replay_main([str(path if by == "file" else tmp_path)], monkeypatch)
    assert app.backend is None, "a replay must not talk to a broker"

    recording = session_kill()
    end = recording.end
    direct = replay(recording.events, mode=MODE)
    model: Model = app.model
    assert app.clock() == end, "the replay's clock stands at the log's last event"
    ledger, expected = model.ledger, direct.ledger
    assert (
        (ledger.published, ledger.done_messages, ledger.redeliveries, ledger.lost, ledger.duplicates)
        == (
            expected.published,
            expected.done_messages,
            expected.redeliveries,
            expected.lost,
            expected.duplicates,
        )
        == (4, 4, 2, 0, 0)
    )
    assert [r.lifeline() for r in ledger.records.values()] == [r.lifeline() for r in expected.records.values()]
    assert {n: w.status for n, w in model.workers.items()} == {n: w.status for n, w in direct.workers.items()}
    assert model.workers["w1"].status == KILLED
    assert (model.mode, model.queue_name) == (MODE, "lesson_queue")

    seen = asyncio.run(look_at(app))
    total = len(recording.events) + 1  # and SessionStarted
    assert seen.header.startswith(f"replay 0:19.0 / 0:19.0 · event {total}/{total} (read-only) "), seen.header
    assert app.title == f"replay of {path}", "the window and a screenshot are named after the log"
    assert MODE.describe() in seen.header and "lesson_queue" in seen.header, seen.header
    assert "amqp://guest:***@rabbit:5672/%2F" in seen.header
    assert set(seen.cards) == {"w1", "w2"} and "killed" in seen.cards["w1"], seen.cards
    lanes = timeline.render(direct, end, 40).plain.splitlines()
    assert lanes[0].startswith("w1") and "✗" in lanes[0], lanes
    assert "✗" in seen.timeline and "↻" in seen.timeline, seen.timeline
    assert seen.ledger_screen, "F9 did not open the ledger inspector"
    for figure in ("published 4", "done 4", "redeliveries 2", "lost 0"):
        assert figure in seen.summary, seen.summary


def test_a_log_cut_off_mid_line_still_replays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = saved_session(tmp_path)
    whole = path.read_bytes()
    last = encode(session_kill().events[-1]).encode("utf-8")
    assert whole.endswith(last)
    path.write_bytes(whole[: -len(last) // 2])  # the session ended mid-write
    app = opened_by_replay_main([str(path)], monkeypatch)
    assert app.model.events == len(session_kill().events)  # SessionStarted and all but the cut line
    assert app.model.ledger.done_messages == 4


# ----- what a save writes beside the log (Ctrl+S, compare --out)


def test_two_saves_in_the_same_second_get_two_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "time", SimpleNamespace(strftime=lambda pattern: "session-20240101-120000"))
    first = export.session_folder(tmp_path)
    (first / "events.jsonl").write_text("first", encoding="utf-8")
    second = export.session_folder(tmp_path)
    third = export.session_folder(tmp_path)
    assert [first.name, second.name, third.name] == [
        "session-20240101-120000",
        "session-20240101-120000-2",
        "session-20240101-120000-3",
    ]
    assert all(folder.is_dir() for folder in (first, second, third))
    assert (first / "events.jsonl").read_text(encoding="utf-8") == "first", "a later save overwrote an earlier one"


def test_the_ledger_csv_has_one_row_per_task_with_its_story(tmp_path: Path) -> None:
    model = replay(session_kill().events, mode=MODE)
    path = tmp_path / "deeper" / "ledger.csv"
    assert export.write_ledger_csv(model.ledger, path) == 4
    with path.open(encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == export.LEDGER_COLUMNS
    by_label = {row["label"]: row for row in rows}
    assert sorted(by_label) == ["#1", "#2", "#3", "#4"]
    one = by_label["#1"]
    assert (one["msg_id"], one["body"], one["state"], one["deliveries"], one["done_count"]) == (
        f"{PREFIX}-1",
        "First message.",
        "done",
        "2",
        "1",
    )
    assert one["why_last"] == "after a crash"
    assert one["lifeline"] == "#1 -> w1 -> killed -> requeued -> w2 (redelivered) -> done"
    assert float(one["published"]) == model.ledger.records[f"{PREFIX}-1"].published


@pytest.mark.timeout(60)
def test_keys_for_live_workers_say_the_replay_is_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """F2-F8 in a replay: each says why nothing happens, and nothing changes."""
    app = opened_by_replay_main([str(saved_session(tmp_path))], monkeypatch)
    said: list[str] = []

    async def press_all() -> None:
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.pause()
            monkeypatch.setattr(app, "notify", lambda message, **kwargs: said.append(str(message)))
            before = (app.model.mode, {n: w.status for n, w in app.model.workers.items()})
            for key in ("f2", "f3", "f4", "f5", "f6", "f7", "f8"):
                await pilot.press(key)
            await pilot.pause()
            assert (app.model.mode, {n: w.status for n, w in app.model.workers.items()}) == before

    asyncio.run(press_all())
    assert len(said) == 7, said
    assert all(line.startswith("Read-only view: no live workers to ") for line in said), said
