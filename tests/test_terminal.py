"""A real-terminal smoke test: dispatch-lab in tmux at 120x36, a key or two, then Ctrl+Q."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, child_env, wait_until

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

DISPATCH_LAB = ROOT / ".venv" / "bin" / "dispatch-lab"


class Tmux:
    """One tmux server of our own (its socket in a temporary folder), so nothing here touches anyone else's."""

    def __init__(self, name: str, socket: Path) -> None:
        self.name = name
        self.socket = socket

    def run(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            ["tmux", "-S", str(self.socket), *args], capture_output=True, text=True, timeout=10, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"tmux {args} failed: {done.stderr.strip()}")
        return done.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.name, check=False)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.name, *keys)

    def wait_screen(self, text: str, timeout: float, what: str, *, present: bool = True) -> str:
        """Wait until ``text`` is on the screen (or, with ``present=False``, gone); return the screen."""

        def shown() -> str | None:
            screen = self.screen()
            return screen if (text in screen) == present else None

        try:
            return wait_until(shown, timeout, what, 0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- screen ---\n{self.screen()}") from None


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    server = Tmux(f"dlab-test-{uuid.uuid4().hex[:8]}", tmp_path / "tmux.sock")
    yield server
    server.run("kill-server", check=False)


def workers_on(queue: str) -> list[int]:
    found = subprocess.run(["pgrep", "-af", "--", "-m workers"], capture_output=True, text=True, check=False)
    return [int(line.split()[0]) for line in found.stdout.splitlines() if f"--queue {queue} " in line]


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent to read its exit status."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_dashboard_in_a_real_terminal(broker_url: str, queue_name: str, tmux: Tmux, tmp_path: Path) -> None:
    exit_file = tmp_path / "exit-code"
    command = f"{DISPATCH_LAB} --queue {queue_name} --seconds-per-dot 0.1; echo $? > {exit_file}"
    # The URL goes in the environment of the tmux server, never its argv. Textual draws on
    # stderr, so the app's output is left alone.
    subprocess.run(
        ["tmux", "-S", str(tmux.socket), "new-session", "-d", "-s", tmux.name, "-x", "120", "-y", "36", command],
        env=child_env(broker_url),
        check=True,
        timeout=10,
    )
    screen = tmux.wait_screen("idle", 30, "two idle workers on screen")
    wait_until(lambda: len(workers_on(queue_name)) == 2 and "w2" in tmux.screen(), 10, "both workers")
    screen = tmux.screen()
    assert "w1" in screen and "w2" in screen and f"queue {queue_name}" in screen, screen
    assert "guest:guest" not in screen
    pids = workers_on(queue_name)

    tmux.keys("F1")
    tmux.wait_screen("Dispatch modes", 10, "the help screen")
    tmux.keys("Escape")
    tmux.wait_screen("Dispatch modes", 10, "the help screen closed", present=False)
    tmux.wait_screen("w1", 5, "the dashboard again")

    tmux.keys("C-q")
    code = wait_until(lambda: exit_file.exists() and exit_file.read_text().strip(), 15, "dispatch-lab to exit")
    assert code == "0"
    assert not [pid for pid in pids if alive(pid)], "workers outlived the dashboard"
    assert not workers_on(queue_name)


def test_a_class_sees_every_figure_at_80x24(broker_url: str, queue_name: str, tmux: Tmux, tmp_path: Path) -> None:
    """A class's terminal: the queue's figures, each worker's counts, the publisher and the keys, all on screen."""
    exit_file = tmp_path / "exit-code"
    command = f"{DISPATCH_LAB} --queue {queue_name} --seconds-per-dot 0.1; echo $? > {exit_file}"
    subprocess.run(
        ["tmux", "-S", str(tmux.socket), "new-session", "-d", "-s", tmux.name, "-x", "80", "-y", "24", command],
        env=child_env(broker_url),
        check=True,
        timeout=10,
    )
    wait_until(lambda: len(workers_on(queue_name)) == 2, 30, "both workers")
    pids = workers_on(queue_name)
    tmux.keys("Tab")  # from the cards to the task input (focus order: cards, then the publisher)

    def all_shown() -> str | None:
        screen = tmux.screen()
        rows = screen.splitlines()
        figures = all(any(row.startswith(f"│{label} ") for row in rows) for label in ("ready", "unacked", "consumers"))
        done = any(row.startswith("│done ") for row in rows)
        counts = sum("received 0 done 0 holds 0" in row for row in rows) == 2
        workers = "w1 · idle" in screen and "w2 · idle" in screen
        return screen if figures and done and counts and workers else None

    try:
        screen = wait_until(all_shown, 30, "the figures of the queue and both workers")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- screen ---\n{tmux.screen()}") from None
    rows = screen.splitlines()
    assert len(rows) == 24 and all(len(row) <= 80 for row in rows)
    assert "task" in rows[-3] and "Hello..." in rows[-3] and "Send" in rows[-3], screen
    keys = rows[-2] + rows[-1]
    for key in ("f1 Help", "f2 +Worker", "f3 Kill", "f4 Stop", "f5 Restart", "f6 Prefetch", "f7 Ack", "f9 Msgs"):
        assert key in keys, f"{key} missing from the keys:\n{screen}"

    # The publisher works from here: two tasks, both done, counted on the worker rows.
    tmux.keys("Enter")
    tmux.keys("Enter")
    tmux.wait_screen("holds 0", 5, "the rows")

    def both_done() -> str | None:
        rows = tmux.screen().splitlines()
        done = [row for row in rows if row.startswith("│done ")]
        return "\n".join(rows) if done and done[0].split()[1] == "2" else None

    wait_until(both_done, 30, "two tasks done")

    tmux.keys("C-q")
    code = wait_until(lambda: exit_file.exists() and exit_file.read_text().strip(), 15, "dispatch-lab to exit")
    assert code == "0"
    assert not [pid for pid in pids if alive(pid)], "workers outlived the dashboard"
    assert not workers_on(queue_name)
