"""The broker password stays secret: not in any process's argv, not on screen, not in saved files, not in errors.

The real dashboard runs in tmux (120x36) as a dedicated broker user with a
distinctive password, given only through AMQP_URL. It starts its workers,
publishes a task (Enter in the task input) and saves a session (Ctrl+S, from a
temp dir so ``runs/`` lands there). Then the password is looked for in the
command lines of the dashboard and every process under it, on the screen, and
in events.jsonl, ledger.csv and screen.svg. Error paths that hold the real
password in their URL (unknown vhost, a clashing queue) and a wrong password
must print their sentence without it.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pika
import pytest

from tests.helpers import ROOT, child_env, run_module, wait_until
from workers.settings import url_parts

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

DISPATCH_LAB = ROOT / ".venv" / "bin" / "dispatch-lab"


@dataclass(frozen=True)
class BrokerUser:
    name: str
    password: str
    url: str

    def url_for(self, *, vhost: str | None = None, password: str | None = None) -> str:
        parts = url_parts(self.url)
        return (
            f"amqp://{self.name}:{quote(password or self.password, safe='')}@{parts.host}:{parts.port}/"
            f"{quote(vhost or parts.vhost, safe='')}"
        )


def rabbitmqctl(*args: str, stdin: str | None = None) -> None:
    done = subprocess.run(["rabbitmqctl", *args], input=stdin, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise OSError(f"rabbitmqctl {args[0]} failed: {done.stderr.strip() or done.stdout.strip()}")


@pytest.fixture
def broker_user(broker_url: str) -> Iterator[BrokerUser]:
    """A user of the local broker with a distinctive password (given on stdin, so in no argv), deleted after."""
    parts = url_parts(broker_url)
    local = parts.host in ("127.0.0.1", "localhost") and parts.port == 5672
    if shutil.which("rabbitmqctl") is None or not local:
        pytest.skip("needs rabbitmqctl for the broker on localhost:5672")
    name = f"dlab_sec_{uuid.uuid4().hex[:8]}"
    password = f"Pw{secrets.token_hex(10)}Zx"
    try:
        rabbitmqctl("add_user", name, stdin=password)
    except OSError as exc:
        pytest.skip(f"cannot create a broker user here: {exc}")
    try:
        rabbitmqctl("set_permissions", "-p", parts.vhost, name, ".*", ".*", ".*")
        # The management tag, so the dashboard's HTTP polling logs in with the password too.
        rabbitmqctl("set_user_tags", name, "management")
        user = BrokerUser(name, password, f"amqp://{name}:{password}@{parts.host}:{parts.port}/%2F")
        pika.BlockingConnection(pika.URLParameters(user.url)).close()
        yield user
    finally:
        rabbitmqctl("delete_user", name)


class Tmux:
    """One tmux server of our own (``-L``): nothing here touches anyone else's sessions."""

    def __init__(self) -> None:
        self.name = f"dlab-sec-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(["tmux", "-L", self.name, *args], capture_output=True, text=True, timeout=10, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"tmux {args} failed: {done.stderr.strip()}")
        return done.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.name, check=False)

    def wait_screen(self, text: str, timeout: float, what: str) -> str:
        def shown() -> str | None:
            screen = self.screen()
            return screen if text in screen else None

        try:
            return wait_until(shown, timeout, what, 0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- screen ---\n{self.screen()}") from None


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    server = Tmux()
    yield server
    server.run("kill-server", check=False)


def parents() -> dict[int, int]:
    """Every process's parent, from /proc."""
    found: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[int(stat.parent.name)] = int(fields[1])
    return found


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    by_parent = parents()
    tree, frontier = [root], [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in by_parent.items() if parent == pid]
        tree += children
        frontier += children
    return tree


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.timeout(90)
def test_password_in_no_argv_screen_or_saved_file(
    broker_user: BrokerUser, queue_name: str, tmux: Tmux, tmp_path: Path
) -> None:
    secret = broker_user.password
    exit_file = tmp_path / "exit-code"
    command = (
        f"cd {tmp_path} && {DISPATCH_LAB} --broker url --queue {queue_name} --workers 2 --seconds-per-dot 0.01; "
        f"echo $? > {exit_file}"
    )
    # The URL only in the environment of tmux's server; Textual draws on stderr, left alone.
    subprocess.run(
        ["tmux", "-L", tmux.name, "new-session", "-d", "-s", tmux.name, "-x", "120", "-y", "36", command],
        env=child_env(broker_user.url),
        check=True,
        timeout=10,
    )
    shell = int(tmux.run("display-message", "-p", "-t", tmux.name, "#{pane_pid}").strip())

    def workers_up() -> list[int] | None:
        pids = [pid for pid in descendants(shell) if b"workers.worker" in cmdline(pid)]
        return pids if len(pids) == 2 and "idle" in tmux.screen() else None

    try:
        wait_until(workers_up, 30, "two workers under the dashboard, idle on screen")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- screen ---\n{tmux.screen()}") from None

    tmux.run("send-keys", "-t", tmux.name, "Enter")  # the task input has the focus: publish "Hello..." once
    tmux.wait_screen("confirmed 1", 15, "the task confirmed")
    tmux.wait_screen("runs 1", 15, "the task done")
    tmux.run("send-keys", "-t", tmux.name, "C-s")

    def saved() -> list[Path] | None:
        folders = list((tmp_path / "runs").glob("session-*"))
        files = [folders[0] / name for name in ("events.jsonl", "ledger.csv", "screen.svg")] if folders else []
        return files if files and all(f.exists() and f.stat().st_size > 0 for f in files) else None

    files = wait_until(saved, 15, "the saved session in runs/")
    screen = tmux.wait_screen("Saved", 10, "the save notification")

    processes = descendants(shell)
    ours = {pid: cmdline(pid) for pid in processes}
    assert sum(b"workers.worker" in argv for argv in ours.values()) == 2, ours
    assert any(b"dispatch-lab" in argv for argv in ours.values()), ours
    leaked = {pid: argv for pid, argv in ours.items() if secret.encode() in argv}
    assert not leaked, f"the password is in the argv of {leaked}"

    assert secret not in screen, screen
    events = files[0].read_text(encoding="utf-8")
    assert f"{broker_user.name}:***@" in events, "the session log names the broker, its password masked"
    for path in files:
        assert secret.encode() not in path.read_bytes(), f"the password is in {path.name}"
    print(f"\nsecret checked in {len(ours)} processes, a {len(screen)}-char screen and {[f.name for f in files]}")

    tmux.run("send-keys", "-t", tmux.name, "C-q")
    code = wait_until(lambda: exit_file.exists() and exit_file.read_text().strip(), 15, "dispatch-lab to exit")
    assert code == "0"
    gone = wait_until(lambda: not [p for p in processes if p != shell and cmdline(p)], 10, "every process gone")
    assert gone


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["events", "tutorial"])
def test_worker_errors_never_show_the_password(broker_user: BrokerUser, queue_name: str, mode: str) -> None:
    secret = broker_user.password
    events = ["--events"] if mode == "events" else []
    # A real password and a vhost that does not exist.
    missing = f"no-vhost-{uuid.uuid4().hex[:6]}"
    result = run_module("workers.worker", ["--queue", queue_name, *events], broker_user.url_for(vhost=missing))
    assert result.code == 1 and f"no virtual host {missing!r}" in result.stderr, result
    assert secret not in result.output and "Traceback" not in result.output, result.output
    # A real password and a queue that exists with other arguments.
    connection = pika.BlockingConnection(pika.URLParameters(broker_user.url))
    connection.channel().queue_declare(queue_name, durable=False)
    connection.close()
    result = run_module("workers.worker", ["--queue", queue_name, *events], broker_user.url)
    assert result.code == 1 and "already exists with a different 'durable'" in result.stderr, result
    assert secret not in result.output and "Traceback" not in result.output, result.output
    # A wrong password that is the real one with a letter more: masking must not reveal the real one either.
    result = run_module("workers.worker", ["--queue", queue_name, *events], broker_user.url_for(password=secret + "x"))
    assert result.code == 1 and "refused the login" in result.stderr, result
    assert secret not in result.output and "Traceback" not in result.output, result.output
