"""Text from outside is text in every view: bodies, names, ids, errors and reasons, never markup.

A sweep of hostile strings (markup balanced and not, ``[link=…]``, ``[@click=…]``,
ANSI escapes, ``\\r``, tabs, NUL, wide characters, backslashes, 1 MB) goes through
the replay of a saved session (header, cards, queue panel, timeline, F9 list and
detail, the SVG screenshot), the toasts (publisher pane, worker keys, a
scenario's actions, a broker restart's error, Ctrl+S), the compare screen and
``dispatch-lab compare``, and the CSV. Live, against the broker: ``[/]`` typed into
the publisher pane and a ``[link=…]`` body from ``new-task`` in another terminal.
Each check reads what the widgets drew and asserts the literal text, escaped
as ``tui.text`` escapes it, and no raw control character on the screen.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rich.cells import set_cell_size
from rich.console import Console
from rich.table import Table
from rich.text import Text
from textual.widget import Widget
from textual.widgets import DataTable, Input, Static

from tests.helpers import run_module
from tests.recordings import PREFIX, T0, Recorder
from tests.test_app import Lab, run_lab
from tests.test_bad_input import screen_text
from tests.test_replay import opened_by_replay_main
from tui.engine.backend import FeedBackend, LabConfig
from tui.engine.pool import Arrival
from tui.engine.runner import Check, RunResult, WorkerFigures
from tui.engine.session_log import SessionLog
from tui.model import observations as obs
from tui.model.ledger import DONE
from tui.model.scenarios import Action, Scenario
from tui.model.state import Model
from tui.teaching import export
from tui.teaching.compare import report
from tui.text import ERROR_CHARS, TOAST_CHARS, for_toast, printable, quoted
from tui.view.app import DispatchLab
from tui.view.widgets.compare_screen import CompareScreen
from tui.view.widgets.lab_header import LabHeader
from tui.view.widgets.messages_screen import MessagesScreen
from tui.view.widgets.publisher import PublisherPane
from tui.view.widgets.queue_panel import QueuePanel
from tui.view.widgets.timeline_view import TimelineView
from tui.view.widgets.worker_card import NAME_CHARS, WorkerCard
from workers import protocol
from workers.local_node import LocalNodeError
from workers.settings import DispatchMode, mask_url

HOSTILE = {
    "close": "[/]",
    "balanced": "[red]oops[/red]",
    "bold": "[b]",
    "link": "[link=http://x]y[/link]",
    "click": "[@click=app.quit]x[/]",
    "unfinished": "b[/",  # breaks Textual's markup even escaped (rich.markup.escape)
    "backslash": "C:\\[b]x\\",
    "ansi": "\x1b[31mred",
    "cr": "over\rwritten",
    "tab": "a\tb",
    "nul": "nul\x00here",
    "newline": "two\nlines",
    "cjk": "工作队列",
    "emoji": "🐇🥕",
}
MEGABYTE = "[/]" + "x" * (1 << 20)
CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
"""Control characters that must never reach the terminal (a line break between screen lines is fine)."""
SIZE = (160, 50)
NAME = 255
"""The longest queue name, message id or connection name AMQP carries (a short string)."""


def sweep() -> Iterator[Any]:
    for name, text in HOSTILE.items():
        yield pytest.param(text, id=name)
    yield pytest.param(MEGABYTE, id="megabyte")


def rendered(widget: Widget) -> str:
    """What a widget drew, as plain text."""
    return str(widget.render())


def border_title(widget: Widget) -> str:
    """A widget's border title as plain text (the property gives it back as markup)."""
    title = widget._border_title
    return "" if title is None else title.plain


# ----- the helpers themselves


def test_printable_escapes_what_repr_escapes_and_leaves_the_rest() -> None:
    escaped = {"ansi": "\\x1b[31mred", "cr": "over\\rwritten", "tab": "a\\tb", "nul": "nul\\x00here",
               "newline": "two\\nlines"}  # fmt: skip
    for key, text in HOSTILE.items():
        assert printable(text) == escaped.get(key, text), key
    assert printable("\u202eevil\u200b") == "\\u202eevil\\u200b", "a bidi override or a zero-width space shows"


def test_a_toast_shows_about_sixty_characters_of_anything() -> None:
    began = time.perf_counter()
    short, body = for_toast(MEGABYTE), quoted(MEGABYTE)
    assert time.perf_counter() - began < 0.01, "a 1 MB body was escaped whole"
    assert len(short) == TOAST_CHARS and short.endswith("…") and short.startswith("[/]xxx")
    assert len(body) <= TOAST_CHARS + 3 and body.startswith("'[/]xxx") and body.endswith("'…"), body
    assert quoted("\x00" * 100).startswith("'\\x00\\x00") and len(quoted("\x00" * 100)) <= TOAST_CHARS + 3
    assert quoted("[/]") == "'[/]'" and for_toast("[/]") == "[/]"


# ----- a replayed session: every view of the dashboard


def broker_of(text: str) -> str:
    """The broker a hostile session names: ``text`` is its host."""
    return f"amqp://guest:***@{text[:40]}:5672/%2F"


def hostile_session(text: str, folder: Path) -> Path:
    """A saved session where ``text`` is the queue, the broker's host, a worker, a body, a foreign id, an error.

    Names and ids are AMQP short strings (255 bytes at most), so a 1 MB text is
    only a body in full; elsewhere its first NAME characters.
    """
    name = text[:NAME]
    r = Recorder()
    r.connected()
    external = (obs.ExternalConsumer(name, 1, True, 0),)
    r.add(obs.QueueSample(r.now, 0, 2, 0, external))
    r.spawn(name, 4101, prefetch=1)
    r.after(1)
    r.publish(text)
    r.receive(name, 1)
    r.start(name, 1)
    r.after(1)
    r.done(name, 1)
    # A task from another publisher: its label is its message id.
    r.add(
        protocol.Received(name, r.now, 2, name, text, False),
        protocol.Started(name, r.now, 2, name, 0.0),
        protocol.Done(name, r.now + 0.5, 2, name, True),
    )
    r.after(1)
    r.add(protocol.Error(name, r.now, name), obs.WorkerStderr(name, r.now, name))
    r.kill(name)
    log = SessionLog(folder / "events.jsonl")
    log.start()
    arrivals: list[Arrival] = [obs.SessionStarted(T0, name, PREFIX, 1, "manual", True, broker_of(text)), *r.events]
    log.add(arrivals)
    log.close()
    return log.path


@dataclass
class Looked:
    screen: str
    header: str
    card_title: str
    card: str
    panel_title: str
    panel: str
    timeline: str
    rows: list[list[str]] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    """The F9 detail's title for each row."""
    details: list[str] = field(default_factory=list)
    """The screen with each row's detail."""
    svg: str = ""


async def look(app: DispatchLab, tmp_path: Path) -> Looked:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        card = app.query_one(WorkerCard)
        panel = app.query_one(QueuePanel)
        seen = Looked(
            screen=screen_text(app.export_screenshot()),
            header=rendered(app.query_one(LabHeader)),
            card_title=border_title(card),
            card="\n".join(rendered(part) for part in card.query(Static)),
            panel_title=border_title(panel),
            panel="\n".join(rendered(part) for part in panel.query(Static)),
            timeline=rendered(app.query_one(TimelineView)),
        )
        await pilot.press("f9")
        await pilot.pause()
        assert isinstance(app.screen, MessagesScreen)
        table = app.screen.query_one(DataTable)
        seen.rows = [[str(cell) for cell in table.get_row_at(row)] for row in range(table.row_count)]
        for row in range(table.row_count):
            table.move_cursor(row=row)
            await pilot.pause()
            detail = app.screen.query_one("#message-detail", Static).content
            assert isinstance(detail, Table) and isinstance(detail.title, Text)
            seen.titles.append(detail.title.plain)
            seen.details.append(screen_text(app.export_screenshot()))
        app.save_screenshot(filename="screen.svg", path=str(tmp_path))
        seen.svg = (tmp_path / "screen.svg").read_text(encoding="utf-8")
    return seen


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", sweep())
def test_a_replay_shows_hostile_text_literally_in_every_view(
    text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = opened_by_replay_main([str(hostile_session(text, tmp_path))], monkeypatch)
    seen = asyncio.run(look(app, tmp_path))
    assert app.return_code in (None, 0)
    name = printable(text[:NAME])
    broker = printable(mask_url(broker_of(text)))  # an @ in the host is masked as if a password ended there
    assert f" · queue {name} (durable) {broker}" in seen.header, seen.header
    assert seen.card_title == f"{for_toast(text[:NAME], NAME_CHARS)} · pid 4101 · killed", seen.card_title
    # The worker's own lines: the body as it quotes it, its error, and its stderr after the kill.
    assert f" [x] Received {text!r}\n [x] Done\n [!] {name}\n [!] killed (SIGKILL)\n{name}" in seen.card, seen.card
    assert seen.panel_title == f"queue {name} (durable)", seen.panel_title
    assert f"\n {printable(text[:28])} prefetch 1 manual ack unacked 0\n" in seen.panel, seen.panel
    assert f"\n{name} -> {name} -> done\n#1 -> {name} -> done\n" in seen.panel, seen.panel
    assert seen.timeline.startswith(set_cell_size(name, 4) + " ·"), seen.timeline
    lifelines = {"#1": f"#1 -> {name} -> done", name: f"{name} -> {name} -> done"}
    assert sorted((row[0], row[4]) for row in seen.rows) == sorted(lifelines.items()), seen.rows
    titles = {row[0]: title for row, title in zip(seen.rows, seen.titles, strict=True)}
    assert titles == {label: f"{label} {quoted(text)}: {line}" for label, line in lifelines.items()}, titles
    for screen in seen.details:
        assert quoted(text)[:20] in screen, screen  # and on the screen, as far as it fits
    for what in [seen.screen, *seen.details, seen.svg]:
        assert not CONTROLS.search(what), f"a raw control character on screen: {CONTROLS.search(what)!r}"


def test_a_replay_titles_itself_with_the_path_escaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The title names the SVG screenshot and the terminal's window: a path's ESC must not reach either."""
    folder = tmp_path / "lesson\x1b]0;pwned\x07[b]"
    folder.mkdir()
    app = opened_by_replay_main([str(hostile_session("w1", folder))], monkeypatch)
    assert app.title == f"replay of {printable(str(folder / 'events.jsonl'))}", app.title
    assert not CONTROLS.search(app.title) and "[b]" in app.title


# ----- toasts


class PublishingFeed(FeedBackend):
    """Enough of the Backend for the keys: it keeps what it is asked to publish and kill; nothing reaches a broker.

    Its private node fails to restart with ``node_error``, reported from a thread as the real one does.
    """

    mode = DispatchMode(1, "manual")
    tasks_survive_restart = True

    def __init__(self, node_error: str) -> None:
        super().__init__()
        self.node = BrokenNode(node_error)  # type: ignore[assignment]
        self.published: list[list[str]] = []
        self.killed: list[str] = []

    def publish(self, bodies: list[str]) -> None:
        self.published.append(bodies)

    def publish_run(self, name: str, bodies: list[str]) -> None:
        self.publish(bodies)

    def set_mode(self, mode: DispatchMode, remote: Sequence[str] = (), unreached: object = None) -> list[str]:
        return []

    def kill(self, name: str) -> bool:
        self.killed.append(name)
        return True

    def stop(self, name: str) -> bool:
        return False

    def add_worker(self, name: str | None = None) -> str:
        return name or "w9"

    def restart_broker(self, done: Callable[[float], None], failed: Callable[[str], None]) -> threading.Thread:
        def restart() -> None:
            try:
                self.node.restart()
            except LocalNodeError as exc:
                failed(str(exc))

        thread = threading.Thread(target=restart)
        thread.start()
        return thread


class BrokenNode:
    """A private node whose restart fails with ``message``."""

    def __init__(self, message: str) -> None:
        self.message = message

    def restart(self) -> None:
        raise LocalNodeError(self.message)


def toasts(app: DispatchLab) -> list[str]:
    """The toasts on screen, as their text."""
    return [rendered(toast) for toast in app.screen.query("Toast")]


async def wait_for_toast(app: DispatchLab, fragment: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [t for t in toasts(app) if fragment in t]
        if found:
            return found[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no toast with {fragment!r}: {toasts(app)}")


async def wait_drawn(widget: Widget, timeout: float = 10) -> str:
    """What ``widget`` shows once it shows something: the view draws a part at a time, later on a busy machine."""
    deadline = time.monotonic() + timeout
    while not rendered(widget) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return rendered(widget)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", sweep())
def test_toasts_show_outside_text_as_text_and_short(text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feed = PublishingFeed(f"The private RabbitMQ node exited during boot: {text}")
    model = Model(queue="q", mode=DispatchMode(1, "manual"), prefix=PREFIX)
    name = text[:NAME]
    model.apply_all(
        [
            protocol.Ready(text, T0, 1, "q", 1, "manual"),
            obs.Published(f"{PREFIX}-1", T0, text),
            # It holds a task from another publisher, whose id is its label on the card.
            protocol.Received(text, T0, 1, name, text, False),
            protocol.Started(text, T0, 1, name, 5.0),
        ]
    )
    app = DispatchLab(LabConfig(url="amqp://guest:***@localhost/%2F", queue="q"), model, feed)  # type: ignore[arg-type]
    folder = tmp_path / "runs [b]x"
    monkeypatch.setattr("tui.view.actions.session_folder", lambda runs_dir=None: folder)
    said: dict[str, str] = {}

    async def drive() -> None:
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            said["task line"] = await wait_drawn(app.query_one(WorkerCard).query_one(".task", Static))
            body = app.query_one("#task-body", Input)
            body.value = text
            body.focus()
            await pilot.press("enter")
            said["publish"] = await wait_for_toast(app, "Publishing")
            app.selected = text
            await pilot.press("f3")
            said["kill"] = await wait_for_toast(app, "Killed")
            await pilot.press("f10")
            said["error"] = await wait_for_toast(app, "RabbitMQ" if text == MEGABYTE else printable(text)[:20])
            scenario = Scenario(text, text, (text,), (Action(0.1, "kill", text),))
            app.post_message(PublisherPane.PublishTasks([text], for_toast(scenario.name), scenario))
            said["scenario"] = await wait_for_toast(app, "kill ")
            folder.mkdir()
            await pilot.press("ctrl+s")
            said["save"] = await wait_for_toast(app, "Saved")

    asyncio.run(drive())
    assert feed.published[0] == [text] and feed.killed == [text, text]
    assert said["publish"] == f"Publishing {quoted(text)} ×1 (1 tasks)", said["publish"]
    assert said["task line"].startswith(f"{printable(name)} "), said["task line"]
    assert said["kill"] == f"Killed {for_toast(text)} with SIGKILL: 1 task(s) it held will be requeued by the broker."
    error = f"The private RabbitMQ node exited during boot: {text}"
    assert said["error"] == for_toast(error, ERROR_CHARS), said["error"]
    assert said["scenario"] == f"{for_toast(text)}: {for_toast(f'kill {text} at 0.1s')}", said["scenario"]
    assert said["save"].startswith(f"Saved 2 ledger rows, events and a screenshot to {printable(str(folder))}")
    for toast in said.values():
        assert not CONTROLS.search(toast), toast
        assert len(toast) < ERROR_CHARS + 100, f"a toast of {len(toast)} characters"
    limit = csv.field_size_limit(1 << 24)  # the reader's own cap (128 KiB) is below a 1 MB body
    try:
        with (folder / "ledger.csv").open(encoding="utf-8", newline="") as stream:
            bodies = {row["msg_id"]: row["body"] for row in csv.DictReader(stream)}
    finally:
        csv.field_size_limit(limit)
    assert bodies == {f"{PREFIX}-1": text, name: text}, "the CSV keeps the bodies as they were"


# ----- the CSV export


def test_the_csv_keeps_bodies_and_defuses_formulas(tmp_path: Path) -> None:
    model = Model(prefix=PREFIX)
    bodies = [*HOSTILE.values(), '=HYPERLINK("http://x","y")', "+1+cmd|' /C calc'!A0", "@SUM(1)", "-2+3", "\tx"]
    model.apply_all([obs.Published(f"{PREFIX}-{n}", T0 + n, body) for n, body in enumerate(bodies, 1)])
    path = tmp_path / "ledger.csv"
    assert export.write_ledger_csv(model.ledger, path) == len(bodies)
    with path.open(encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    for row, body in zip(rows, bodies, strict=True):
        wanted = "'" + body if body[0] in "=+-@\t" else body
        assert row["body"] == wanted, (row["body"], body)


# ----- compare: the screen and the command


def hostile_result(text: str) -> RunResult:
    """A finished comparison run of a scenario named ``text``, with a worker and a task label of the same."""
    name = text[:NAME]
    workers = [WorkerFigures(name, 1, 0.5, 0.0, [name]), WorkerFigures("w2", 0, 0.0, 0.0, [])]
    checks = [Check("all_done", True, True, True)]
    return RunResult(text, DispatchMode(0, "manual"), workers, 1.0, 1, 1, 0, 0, 0, checks, False, Model())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", [p for p in sweep() if p.id in ("close", "unfinished", "ansi", "cjk", "megabyte")])
def test_the_compare_screen_shows_names_and_errors_as_text(text: str) -> None:
    """A few of the sweep (the report below takes all): the screen draws the same table, plus a status line."""
    scenario = Scenario(text, text, (text,))
    app = DispatchLab(LabConfig(url="amqp://guest:***@localhost/%2F"), Model(), None, presets={})

    async def drive() -> tuple[str, str]:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            screen = CompareScreen(app.config.url, {text: scenario}, [[hostile_result(text), hostile_result(text)]])
            await app.push_screen(screen)
            await pilot.pause()
            screen._finished([], text)
            await pilot.pause()
            return screen_text(app.export_screenshot()), rendered(screen.query_one("#compare-status"))

    seen, status = asyncio.run(drive())
    assert status == for_toast(text, ERROR_CHARS), status
    assert f"scenario {for_toast(text)[:30]}" in seen, seen
    assert not CONTROLS.search(seen), CONTROLS.search(seen)


@pytest.mark.parametrize("text", sweep())
def test_the_compare_report_shows_names_as_text(text: str) -> None:
    console = Console(record=True, width=200, file=io.StringIO())
    report([hostile_result(text), hostile_result(text)], console)
    out = console.export_text()
    assert f"scenario {for_toast(text)} under manual ack: the same tasks under each prefetch" in out, out
    assert printable(text)[:8] in out.split("\n", 3)[-1], out  # the worker and task columns
    assert not CONTROLS.search(out), out


@pytest.mark.broker
@pytest.mark.timeout(90)
def test_compare_runs_a_scenario_with_a_hostile_name(broker_url: str, tmp_path: Path) -> None:
    path = tmp_path / "hostile.json"
    name = "[/][link=http://x]y[/link]\x1b[31m"
    path.write_text(json.dumps({"name": name, "description": "[b]", "tasks": ["[/]", "[red]oops[/red]"]}))
    result = run_module(
        "tui.cli", ["compare", "--scenario", str(path), "--modes", "1", "--workers", "1", "--seconds-per-dot", "0.01"],
        broker_url, timeout=60,
    )  # fmt: skip
    assert result.code == 0 and "Traceback" not in result.output, result.output
    assert f"scenario {printable(name)}" in result.stdout and "\x1b" not in result.stdout, result.stdout


# ----- live, against the broker


@pytest.mark.broker
@pytest.mark.timeout(90)
def test_typed_and_foreign_markup_bodies_live(
    broker_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[/]`` typed into the pane, and ``[link=…]`` from new-task elsewhere: published, done, shown as typed."""
    foreign = "[link=http://x]y[/link]"
    seen: dict[str, Any] = {}

    async def scenario(lab: Lab) -> None:
        await lab.ready(1)
        await lab.type_task("[/]", 1, keystrokes=True)
        seen["toast"] = await wait_for_toast(lab.app, "Publishing")
        ours = await lab.until(lambda: [r for r in lab.ours() if r.state == DONE], 20, "the typed task done")
        assert ours[0].body == "[/]"
        result = run_module("workers.new_task", ["--queue", queue_name, foreign], broker_url)
        assert result.code == 0, result.output
        await lab.until(
            lambda: any(r.body == foreign and r.state == DONE for r in lab.model.ledger.records.values()),
            20,
            "the task from new-task done",
        )
        seen["card"] = lab.card_text("w1")
        await lab.pilot.press("f9")
        await lab.pilot.pause()
        table = lab.app.screen.query_one(DataTable)
        details = []
        for row in range(table.row_count):
            table.move_cursor(row=row)
            await lab.pilot.pause()
            details.append(screen_text(lab.app.export_screenshot()))
        seen["details"] = details

    # run_lab's app, with its toasts drawn (run_test leaves them out unless asked).
    run_test = DispatchLab.run_test
    monkeypatch.setattr(DispatchLab, "run_test", lambda app, **kw: run_test(app, **{**kw, "notifications": True}))
    lab = run_lab(broker_url, queue_name, scenario, workers=1)
    assert lab.app.return_code in (None, 0)
    assert seen["toast"] == "Publishing '[/]' ×1 (1 tasks)", seen["toast"]
    assert f" [x] Received {foreign!r}" in seen["card"], seen["card"]
    assert any("'[/]'" in d for d in seen["details"]), seen["details"]
    assert any(foreign in d for d in seen["details"]), seen["details"]
