"""The lesson plan in docs/teaching.md, done as written in a real 80x24 terminal against a real broker.

The plan's **Run**, **Type**, **Press** and **The class will see** lines are the script:
this test reads them from the page, starts each **Run** in tmux (a private RabbitMQ node of
the dashboard's own, since the lesson restarts the broker with F10), sends the keys at a
person's pace, and waits, with a deadline, until every text a **The class will see** line
names is on the screen. Edit a step and this test follows it; let the product drift from
the plan and it fails at the step that no longer shows what the class is told to look at.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import pytest

from tests.helpers import ROOT, wait_until
from tests.test_terminal import DISPATCH_LAB, Tmux, alive
from workers.local_node import node_pids, rabbitmq_server_path

PLAN = ROOT / "docs" / "teaching.md"
SIZE = (80, 24)
"""A class's terminal: the plan is written for it (the plan says what 120x36 adds)."""
PACE = 0.3
"""Seconds between two keys: a teacher's pace. Sent faster, a key can land before the one before it
has taken effect (a Tab moving to the count box, then the digit typed into the task box)."""
SEE_TIMEOUT = 60.0
"""How long a step may take to show what it promises: a broker restart takes 10-15 s on two busy cores."""
BOOT_TIMEOUT = 120.0
"""The first step after a Run: a private node boots in 5-12 s, longer on a loaded machine."""

KEYS = {"Esc": "Escape", "Enter": "Enter", "Tab": "Tab", "↓": "Down", "↑": "Up"}
"""Keys as the plan writes them, to tmux's names (F1-F12, Alt+x and Ctrl+x are translated by rule)."""
BORDERS = re.compile(r"[│▌▏╭╮╰╯─]+")
LINE = re.compile(r"^- \*\*(Run|Type|Press|The class will see):\*\* (.*)$")

pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
    pytest.mark.skipif(rabbitmq_server_path() is None, reason="rabbitmq-server is not installed"),
]


@dataclass
class Action:
    kind: str
    """``run``, ``type``, ``press`` or ``see``."""
    values: list[str]
    step: str
    """The plan's heading of the step, for a failure's message."""


@dataclass
class Session:
    """One **Run** of the plan and every action after it, up to the next Run."""

    command: list[str]
    actions: list[Action] = field(default_factory=list)


def read_plan(text: str) -> list[Session]:
    """The plan's sessions, in order; a malformed line is an error here, not a silently skipped step."""
    sessions: list[Session] = []
    step = "(before the first step)"
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("#### "):
            step = line.removeprefix("#### ").strip()
            continue
        found = LINE.match(line)
        if not found:
            continue
        label, rest = found.groups()
        values = re.findall(r"`([^`]+)`", rest)
        where = f"docs/teaching.md:{number} ({step})"
        assert values, f"{where}: a {label} line names nothing in backquotes"
        if label == "Run":
            assert len(values) == 1 and values[0].startswith("dispatch-lab "), f"{where}: one dispatch-lab command"
            sessions.append(Session(values[0].split()[1:]))
            continue
        assert sessions, f"{where}: a step before the first Run"
        if label == "Type":
            assert len(values) == 1, f"{where}: one text to type"
            sessions[-1].actions.append(Action("type", values, step))
        elif label == "Press":
            sessions[-1].actions.append(Action("press", [tmux_key(v, where) for v in values], step))
        else:
            sessions[-1].actions.append(Action("see", values, step))
    return sessions


def tmux_key(key: str, where: str) -> str:
    """``Alt+1`` -> ``M-1``, ``Ctrl+U`` -> ``C-u``, ``F10``, ``Esc`` -> ``Escape``; anything else fails."""
    if key in KEYS:
        return KEYS[key]
    if re.fullmatch(r"F([1-9]|1[0-2])", key):
        return key
    modifier = re.fullmatch(r"(Alt|Ctrl)\+(\w)", key)
    assert modifier, f"{where}: no such key {key!r} (write F9, Alt+1, Ctrl+U, Esc, Enter, Tab, ↓ or ↑)"
    return f"{'M' if modifier[1] == 'Alt' else 'C'}-{modifier[2].lower()}"


def flat(text: str) -> str:
    """Text as the plan quotes it: box borders and runs of spaces do not count, and a text may wrap."""
    return " ".join(BORDERS.sub(" ", text).split())


def views(screen: str) -> list[str]:
    """The screen read whole, and each column between box borders read down on its own: a text that wraps
    inside a panel beside another (the runs box beside the queue panel) reads on in its own column."""
    rows = screen.splitlines()
    cuts = sorted({0, max(map(len, rows), default=0)} | {x for row in rows for x, c in enumerate(row) if c in "│▌"})
    strips = [" ".join(row[a:b] for row in rows) for a, b in pairwise(cuts)]
    return [flat(screen), *(flat(strip) for strip in strips)]


def on_screen(text: str, screen: str) -> bool:
    wanted = flat(text)
    return any(wanted in view for view in views(screen))


def descendants(root: int) -> set[int]:
    """Every process under ``root``: the dashboard, its workers and its private node."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


class Lesson:
    """A plan's session in a tmux pane: keys at a teacher's pace, the screen read as the class reads it."""

    def __init__(self, tmux: Tmux, workdir: Path) -> None:
        self.tmux = tmux
        self.workdir = workdir
        self.processes: set[int] = set()
        self.nodes: set[str] = set()
        self.captures: dict[str, str] = {}
        """The screen when each step showed what it promised (printed on failure, kept for the report)."""

    def start(self, args: list[str]) -> None:
        width, height = SIZE
        # A COLUMNS or LINES in the environment would win over the pane's size (Python's get_terminal_size).
        exit_code = str(self.workdir / "exit-code")
        # The shell stays after the dashboard exits (what it left on the terminal is part of the last step),
        # until the fixture ends the tmux server.
        command = " ".join(["unset COLUMNS LINES;", str(DISPATCH_LAB), *args, "; echo $? >", exit_code, "; sleep 60"])
        where = ["-s", self.tmux.name, "-c", str(self.workdir), "-x", str(width), "-y", str(height)]
        self.tmux.run("new-session", "-d", *where, command)
        self.shell = int(self.tmux.run("display-message", "-p", "-t", self.tmux.name, "#{pane_pid}").strip())

    def watch(self) -> None:
        """Note every process the dashboard started so far, and which of them are RabbitMQ nodes."""
        for pid in descendants(self.shell) - self.processes:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if argv[0] == "sleep":
                continue  # the shell's, once the dashboard has exited
            self.processes.add(pid)
            if "-dispatch_lab_node" in argv[:-1]:  # the Erlang VM of a node local_node started
                self.nodes.add(argv[argv.index("-dispatch_lab_node") + 1])

    def press(self, keys: list[str]) -> None:
        for key in keys:
            self.tmux.keys(key)
            time.sleep(PACE)

    def type(self, text: str, step: str) -> None:
        self.tmux.run("send-keys", "-t", self.tmux.name, "-l", text)
        self.see([text], step, 10.0)  # in the box before the next key (a person looks before pressing Enter)
        time.sleep(PACE)

    def see(self, texts: list[str], step: str, timeout: float) -> str:
        def shown() -> str | None:
            screen = self.tmux.screen()
            self.watch()
            return screen if all(on_screen(t, screen) for t in texts) else None

        try:
            screen = wait_until(shown, timeout, f"step {step}: {', '.join(texts)}", 0.1)
        except AssertionError as exc:
            screen = self.tmux.screen()
            missing = [t for t in texts if not on_screen(t, screen)]
            raise AssertionError(f"{exc}\nnot on screen: {missing}\n--- screen ---\n{screen}") from None
        self.captures[step] = screen
        return screen

    def finish(self) -> None:
        """The dashboard exited by itself (the plan's Ctrl+Q), cleanly, and took everything it started with it."""
        exit_file = self.workdir / "exit-code"
        code = wait_until(lambda: exit_file.exists() and exit_file.read_text().strip(), 30, "dispatch-lab to exit")
        assert code == "0", f"dispatch-lab exited {code}\n{self.tmux.screen()}"
        assert self.nodes, "the lesson ran on a private node of its own"
        for node in self.nodes:
            wait_until(lambda n=node: not node_pids(n), 30, f"the private node {node} to be gone")
        wait_until(lambda: not [p for p in self.processes if alive(p)], 30, "every process it started to end")


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    server = Tmux(f"dlab-lesson-{uuid.uuid4().hex[:8]}", tmp_path / "tmux.sock")
    yield server
    server.run("kill-server", check=False)


def test_the_plan_reads_as_a_script() -> None:
    """The page holds the lesson and the optional contrast, each ending with Ctrl+Q; every key is a key."""
    sessions = read_plan(PLAN.read_text(encoding="utf-8"))
    assert [s.command for s in sessions] == [
        ["--broker", "private", "--seconds-per-dot", "0.3"],
        ["--broker", "private", "--seconds-per-dot", "0.3", "--transient", "--no-persist"],
    ]
    for session in sessions:
        assert session.actions[0].kind == "see", "the class sees the lab start before the first key"
        assert session.actions[-2].values[-1] == "C-q", "a session ends with Ctrl+Q (nothing left behind)"
        assert session.actions[-1].kind == "see"
    steps = {a.step for a in sessions[0].actions}
    for lesson in ("1.", "2.", "3.", "4."):
        assert any(s.startswith(lesson) for s in steps), f"lesson {lesson} has no step"
    with pytest.raises(AssertionError, match="no such key"):
        read_plan("- **Run:** `dispatch-lab --broker private`\n- **Press:** `Hyper+5`\n")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("index", [0, 1], ids=["lesson", "without-durability"])
def test_the_lesson_plan_runs_as_written(index: int, tmux: Tmux, tmp_path: Path) -> None:
    session = read_plan(PLAN.read_text(encoding="utf-8"))[index]
    lesson = Lesson(tmux, tmp_path)
    lesson.start(session.command)
    timeout = BOOT_TIMEOUT
    try:
        for action in session.actions:
            if action.kind == "press":
                lesson.press(action.values)
            elif action.kind == "type":
                lesson.type(action.values[0], action.step)
            else:
                screen = lesson.see(action.values, action.step, timeout)
                timeout = SEE_TIMEOUT
                if any("sooner than" in v for v in action.values):
                    # The plan says fair dispatch finishes about 1.7x sooner: hold it to at least 1.4x.
                    ratio = re.search(r"(\d+\.\d)x sooner", flat(screen))
                    assert ratio and float(ratio[1]) >= 1.4, f"fair dispatch not clearly sooner:\n{screen}"
        lesson.finish()
    finally:
        for step, screen in lesson.captures.items():
            print(f"=== {step}\n{screen}")
