"""Bad input, one test per row: a clear one-line message, no traceback, a clean exit or recovery, nothing queued lost.

The dashboard's command line (``python -m tui.cli``, as ``dispatch-lab`` runs
it) against bad URLs, clashing queues and out-of-range options; the worker and
the pool against odd tasks (1 MB, 100,000 dots, not UTF-8), odd children
(garbage on stdout, death at start-up, SIGSTOP) and the app in a tiny terminal.
The worker programs' own errors are in test_errors.py; these are the rows of
issue 5 the dashboard and the pool add.
"""

from __future__ import annotations

import asyncio
import errno
import html
import io
import os
import re
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import pika
import pytest
from rich.console import Console
from textual.message import Message
from textual.notifications import Notification, Notify
from textual.widgets import Static

from tests.conftest import WorkerFactory
from tests.helpers import ROOT, SPAWNED, CliResult, child_env, publish_raw, run_module, wait_figures, wait_until
from tests.recordings import SNAPSHOT_NOW, replay, session_snapshot
from tui.engine.backend import Backend, LabConfig
from tui.engine.pool import Inbox, WorkerPool
from tui.engine.session_log import SessionLog
from tui.launch import parse_config, replay_main
from tui.model import observations as obs
from tui.model.ledger import DONE
from tui.model.state import EXITED, Model
from tui.view.app import DispatchLab
from tui.view.widgets.worker_card import WorkerCard
from workers import protocol
from workers.settings import DispatchMode, url_parts

T = TypeVar("T")


def one_line(result: CliResult, fragment: str, secret: str | None = None, prefix: str = "dispatch-lab: ") -> str:
    """The run failed with one line on stderr (besides the argv-password note) holding ``fragment``."""
    assert result.code == 1, result
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("note: ")]
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    assert fragment in lines[0], lines[0]
    assert lines[0].startswith(prefix) and lines[0].endswith("."), lines[0]
    if secret:
        assert secret not in result.output, f"the password leaked: {result.output}"
    return lines[0]


def dashboard(args: list[str], url: str | None, timeout: float = 30) -> CliResult:
    """``dispatch-lab ARGS`` with the URL in AMQP_URL (None: no AMQP_URL), never a private node."""
    return run_module("tui.cli", ["--broker", "url", *args], url, timeout=timeout)


def url_with(broker_url: str, *, password: str | None = None, vhost: str | None = None) -> str:
    parts = url_parts(broker_url)
    return (
        f"amqp://{quote(parts.user, safe='')}:{quote(password or parts.password, safe='')}"
        f"@{parts.host}:{parts.port}/{quote(vhost or parts.vhost, safe='')}"
    )


# ----- the broker URL


@pytest.mark.timeout(60)
def test_unreachable_host(queue_name: str) -> None:
    url = "amqp://guest:pw4unreach@127.0.0.1:1/%2F"
    result = dashboard(["--url", url, "--queue", queue_name], None)
    sentence = one_line(result, "Cannot reach a RabbitMQ broker at 127.0.0.1:1 (connection refused)", "pw4unreach")
    assert "docker compose up -d" in sentence, sentence
    assert "visible in the process list" in result.stderr, "a password in --url earns the argv note"
    # The same URL in AMQP_URL: exactly one line, nothing else.
    result = dashboard(["--queue", queue_name], url)
    one_line(result, "Cannot reach a RabbitMQ broker", "pw4unreach")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.timeout(60)
def test_wrong_password(broker_url: str, queue_name: str) -> None:
    result = dashboard(["--queue", queue_name], url_with(broker_url, password="wrongPW5150"))
    one_line(result, f"refused the login for user {url_parts(broker_url).user!r}", "wrongPW5150")


@pytest.mark.timeout(60)
def test_unknown_vhost(broker_url: str, queue_name: str) -> None:
    vhost = f"no-such-vhost-{uuid.uuid4().hex[:8]}"
    result = dashboard(["--queue", queue_name], url_with(broker_url, vhost=vhost))
    one_line(result, f"no virtual host {vhost!r}", f":{url_parts(broker_url).password}@")


def declare_with_a_task(url: str, queue: str, durable: bool, arguments: dict[str, str] | None) -> None:
    """The queue as someone else made it, with one task already waiting in it."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue=queue, durable=durable, arguments=arguments)
        channel.confirm_delivery()
        channel.basic_publish(
            "", queue, b"waiting.", pika.BasicProperties(delivery_mode=2, message_id="theirs-1"), mandatory=True
        )
    finally:
        connection.close()


CLASHES: dict[str, tuple[bool, dict[str, str] | None]] = {
    "durable": (False, None),  # the tutorial's trap: hello declared non-durable first
    "x-queue-type": (True, {"x-queue-type": "quorum"}),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("program", ["dashboard", "worker"])
@pytest.mark.parametrize("argument", list(CLASHES))
def test_queue_exists_with_other_arguments(broker_url: str, queue_name: str, argument: str, program: str) -> None:
    declare_with_a_task(broker_url, queue_name, *CLASHES[argument])
    if program == "dashboard":
        result, prefix = dashboard(["--queue", queue_name], broker_url), "dispatch-lab: "
    else:
        result, prefix = run_module("workers.worker", ["--queue", queue_name, "--name", "w1"], broker_url), "w1: "
    sentence = one_line(result, f"Queue {queue_name!r} already exists with a different {argument!r}", prefix=prefix)
    assert f"delete_queue {queue_name}" in sentence, sentence
    after = wait_figures(broker_url, queue_name, lambda f: f.consumers == 0, 10, "the queue left alone")
    assert after.ready == 1, "the task already waiting there is still there"


# ----- dashboard options


@pytest.mark.timeout(60)
def test_no_workers_is_allowed_and_starts_none(broker_url: str, queue_name: str) -> None:
    config = parse_config(["--workers", "0", "--broker", "url", "--queue", queue_name], Console(file=io.StringIO()))
    assert config.workers == 0
    backend = Backend(LabConfig(url=broker_url, queue=queue_name, workers=config.workers))
    model = Model(queue=queue_name, prefix=backend.prefix)
    backend.start()
    try:
        backend.publish(["Task."])
        until(backend.inbox, model, lambda: model.ledger.confirmed == 1, 15, "the task confirmed")
        after = wait_figures(broker_url, queue_name, lambda f: f.ready == 1, 10, "the task waiting")
        assert after.consumers == 0 and not backend.pool.processes and not model.workers
    finally:
        backend.shutdown()


USAGE = [
    (["--workers", "-3"], "--workers must be 0 or more, not -3"),
    (["--prefetch", "-1"], "--prefetch must be between 0 (unlimited) and 65535, not -1."),
    (["--prefetch", "70000"], "--prefetch must be between 0 (unlimited) and 65535, not 70000."),
    (["--seconds-per-dot", "-1"], "--seconds-per-dot must be 0 or more (and under an hour), not -1.0."),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("args", "message"), USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_out_of_range_options_are_usage_errors(args: list[str], message: str) -> None:
    result = dashboard(args, "amqp://guest:neverUsedPW@127.0.0.1:1/%2F", timeout=20)
    assert result.code == 2, result
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dispatch-lab: error: ") and last.endswith(message), result.stderr
    assert "neverUsedPW" not in result.output


def test_five_hundred_workers_are_capped_with_one_line() -> None:
    out = io.StringIO()
    config = parse_config(["--workers", "500", "--broker", "url"], Console(file=out, width=60))
    assert config.workers == WorkerPool.MAX_WORKERS == 32
    lines = out.getvalue().splitlines()
    assert lines == ["--workers 500 is more than this dashboard shows well; starting 32."], lines


# ----- odd tasks


@pytest.mark.timeout(60)
def test_one_megabyte_task(broker_url: str, queue_name: str, spawn_worker: WorkerFactory) -> None:
    worker = spawn_worker(queue_name, "w1", seconds_per_dot=0.01)
    worker.ready()
    body = b"Big task " + b"x" * (1 << 20) + b"."
    publish_raw(broker_url, queue_name, body, "big-1")
    [done] = worker.wait_event(protocol.Done, timeout=30)
    [received] = worker.of(protocol.Received)
    assert (received.msg_id, done.msg_id, done.acked) == ("big-1", "big-1", True)
    assert len(received.body) == protocol.BODY_CAP and received.body.endswith("…"), len(received.body)
    assert max(len(line) for line in worker.lines) < 1000, "the event lines stay small"
    assert worker.stop() == 0
    after = wait_figures(broker_url, queue_name, lambda f: f.consumers == 0, 10, "no consumers")
    assert after.ready == 0, "the task was acked"
    assert worker.bad_lines == [] and "Traceback" not in worker.stderr


@pytest.mark.timeout(60)
def test_hundred_thousand_dots(broker_url: str, queue_name: str, spawn_worker: WorkerFactory) -> None:
    spd = 0.01
    w1 = spawn_worker(queue_name, "w1", seconds_per_dot=spd)
    w1.ready()
    publish_raw(broker_url, queue_name, b"Long task" + b"." * 100_000, "long-1")
    [started] = w1.wait_event(protocol.Started)
    assert started.seconds == pytest.approx(100_000 * spd), started

    # The dashboard's card for it, from the model fed with the worker's own events.
    model = Model(mode=DispatchMode(1, "manual"))
    model.apply(obs.WorkerSpawned("w1", started.ts - 1, w1.proc.pid))
    model.apply_all(w1.events)
    line = WorkerCard._task_line(model.workers["w1"], started.ts + 12.5).plain
    assert "long-1" in line and "12.5/1000.0s" in line and "ETA 16 min" in line, line

    w1.kill()
    after = wait_figures(broker_url, queue_name, lambda f: f.ready == 1, 10, "the task requeued")
    assert after.consumers == 0
    w2 = spawn_worker(queue_name, "w2", seconds_per_dot=spd)
    [again] = w2.wait_event(protocol.Received, timeout=20)
    assert (again.msg_id, again.redelivered) == ("long-1", True)


def until(inbox: Inbox, model: Model, condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """Fold what the pool reported into the model until ``condition`` holds; fail after ``timeout``."""

    def check() -> T | None:
        model.apply_all(inbox.drain())
        return condition()

    return wait_until(check, timeout, what)


@pytest.fixture
def pools() -> Iterator[list[WorkerPool]]:
    """Pools made in a test; every worker is stopped (and woken, if stopped by SIGSTOP) afterwards."""
    made: list[WorkerPool] = []
    yield made
    for pool in made:
        for pid in pool.pids():
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        pool.shutdown()


def new_pool(pools: list[WorkerPool], url: str, queue: str, **kwargs: object) -> tuple[WorkerPool, Inbox, Model]:
    inbox = Inbox()
    pool = WorkerPool(url, queue, inbox, mode=DispatchMode(1, "manual"), **kwargs)  # type: ignore[arg-type]
    pools.append(pool)
    return pool, inbox, Model(queue=queue, mode=pool.mode)


@pytest.mark.timeout(60)
def test_non_utf8_task_from_another_client(broker_url: str, queue_name: str, pools: list[WorkerPool]) -> None:
    pool, inbox, model = new_pool(pools, broker_url, queue_name, seconds_per_dot=0.01)
    pool.spawn()
    until(inbox, model, lambda: "w1" in model.workers and model.workers["w1"].status == "idle", 20, "w1 idle")
    publish_raw(broker_url, queue_name, b"\xff\xfe bad \xc3(...", "raw-1")
    record = until(inbox, model, lambda: model.ledger.records.get("raw-1"), 15, "the task received")
    until(inbox, model, lambda: record.state == DONE, 15, "the task done")
    assert record.body == "\\xff\\xfe bad \\xc3(...", record.body
    w1 = model.workers["w1"]
    assert (w1.done, w1.garbage, model.garbage, list(w1.stderr)) == (1, 0, 0, [])
    assert any("\\\\xff\\\\xfe bad" in line for line in w1.log), list(w1.log)
    pool.shutdown()
    wait_figures(broker_url, queue_name, lambda f: f.ready == 0 and f.consumers == 0, 10, "the task acked")


# ----- odd workers


def fake_python(tmp_path: Path, script: str) -> str:
    """An executable the pool runs in place of python: it ignores its arguments."""
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


async def card_text(model: Model, name: str) -> str:
    """What the dashboard's card for ``name`` says, with no broker behind the app."""
    app = DispatchLab(LabConfig(url="amqp://guest:***@replay/%2F"), model, None, clock=time.time, presets={})
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.pause()
        card = app.query_one(f"#card-{name}", WorkerCard)
        return f"{card.border_title}\n" + "\n".join(str(s.content) for s in card.query(Static))


@pytest.mark.timeout(60)
def test_worker_writes_garbage_and_dies_at_startup(tmp_path: Path, queue_name: str, pools: list[WorkerPool]) -> None:
    python = fake_python(
        tmp_path,
        "echo 'this is not an event'\n"
        'echo \'{"v":1,"event":"ready","worker":"w1"}\'\n'
        "echo 'w1: cannot start: the sky is falling' >&2\n"
        "exit 3\n",
    )
    pool, inbox, model = new_pool(pools, "amqp://guest:fakePW77@127.0.0.1:1/%2F", queue_name, seconds_per_dot=1.0,
                                  python=python)  # fmt: skip
    pool.spawn()
    seen: list[obs.Observation] = []

    def exited() -> bool:
        items = inbox.drain()
        seen.extend(items)
        model.apply_all(items)
        return any(isinstance(i, obs.WorkerExited) for i in seen)

    wait_until(exited, 15, "the worker's exit")
    kinds = [type(i).__name__ for i in seen]
    assert kinds.count("WorkerGarbage") == 2 and kinds.index("WorkerStderr") < kinds.index("WorkerExited"), kinds
    w1 = model.workers["w1"]
    assert (w1.status, w1.exit_code, w1.garbage, model.garbage) == (EXITED, 3, 2, 2)
    assert list(w1.stderr) == ["w1: cannot start: the sky is falling"]
    text = asyncio.run(card_text(model, "w1"))
    assert "exited, code 3" in text and "the sky is falling" in text, text


@pytest.mark.timeout(60)
def test_real_worker_dies_at_startup(broker_url: str, queue_name: str, pools: list[WorkerPool]) -> None:
    url = url_with(broker_url, password="dieAtStart42")
    pool, inbox, model = new_pool(pools, url, queue_name, seconds_per_dot=1.0)
    pool.spawn()
    until(inbox, model, lambda: "w1" in model.workers and not model.workers["w1"].alive, 20, "its exit")
    w1 = model.workers["w1"]
    assert (w1.status, w1.exit_code) == (EXITED, 1)
    [line] = list(w1.stderr)
    assert "refused the login" in line and "Traceback" not in line and "dieAtStart42" not in line, line
    assert "refused the login" in model.last_error and "dieAtStart42" not in model.last_error
    text = asyncio.run(card_text(model, "w1"))
    assert "exited, code 1" in text and "refused the login" in text and "dieAtStart42" not in text, text


@pytest.mark.timeout(60)
def test_hung_worker_is_unresponsive_then_dropped(broker_url: str, queue_name: str, pools: list[WorkerPool]) -> None:
    """SIGSTOP a worker holding a task: the card says unresponsive, then the broker drops it (heartbeat 2 s)."""
    heartbeat = 2
    pool, inbox, model = new_pool(pools, broker_url, queue_name, seconds_per_dot=1.0, heartbeat=heartbeat)
    pool.spawn_in_order(2)
    until(inbox, model, lambda: sum(w.status == "idle" for w in model.workers.values()) == 2, 30, "two idle")
    publish_raw(broker_url, queue_name, b"Task.....", "hang-1")
    holder = until(inbox, model, lambda: next((w for w in model.workers.values() if w.held), None), 15, "a holder")
    assert holder.heartbeat == heartbeat, "the negotiated heartbeat, from the worker's alive events"
    os.kill(holder.pid or 0, signal.SIGSTOP)
    stopped = time.time()

    silent = until(inbox, model, lambda: holder.silent_for(time.time()), 10, "the worker unresponsive")
    first = holder.dropped_in(time.time())
    time.sleep(0.3)
    second = holder.dropped_in(time.time())
    assert first is not None and second is not None and second < first <= 2 * heartbeat, (first, second)
    other = next(w for w in model.workers.values() if w is not holder)
    record = model.ledger.records["hang-1"]
    until(inbox, model, lambda: len(record.deliveries) > 1, 20, "the task delivered again")
    took = record.deliveries[-1].ts - stopped
    print(
        f"\nSIGSTOP: unresponsive after {silent:.1f}s silent; the task reached {other.name} {took:.1f}s after SIGSTOP"
    )
    assert [d.worker for d in record.deliveries] == [holder.name, other.name], record.lifeline()
    assert record.deliveries[-1].redelivered, record.lifeline()
    assert heartbeat <= took <= 4 * heartbeat + 6, f"redelivered {took:.1f}s after SIGSTOP"


# ----- a tiny terminal


def screen_text(svg: str) -> str:
    """The characters of a Textual SVG screenshot, line by line."""
    lines: dict[int, list[str]] = {}
    for match in re.finditer(r'<text[^>]*clip-path="url\(#terminal-\d+-line-(\d+)\)">([^<]*)</text>', svg):
        lines.setdefault(int(match[1]), []).append(html.unescape(match[2]).replace("\xa0", " ").strip("\n"))
    return "\n".join("".join(lines[n]) for n in sorted(lines))


@pytest.mark.timeout(60)
def test_terminal_shrunk_to_60x15(tmp_path: Path) -> None:
    model = replay(session_snapshot().events)
    app = DispatchLab(LabConfig(url="amqp://guest:***@localhost/%2F"), model, None, clock=lambda: SNAPSHOT_NOW)

    async def shrink() -> str:
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.pause()
            await pilot.resize_terminal(60, 15)
            await pilot.pause()
            for key in ("f1", "escape", "f9", "escape", "ctrl+n", "tab"):
                await pilot.press(key)
            await pilot.pause()
            app.save_screenshot(filename="small.svg", path=str(tmp_path))
            return app.export_screenshot()

    svg = asyncio.run(shrink())
    assert (tmp_path / "small.svg").stat().st_size > 1000
    text = screen_text(svg)
    # Below the smallest size that works the screen says so (and the keys pressed meanwhile broke nothing).
    assert "enlarge the terminal to at least 70×20" in text, text
    assert app.return_code in (None, 0), "the app did not exit with an error"


@pytest.mark.timeout(30)
def test_terminal_starts_at_60x15() -> None:
    model = replay(session_snapshot().events)
    app = DispatchLab(LabConfig(url="amqp://guest:***@localhost/%2F"), model, None, clock=lambda: SNAPSHOT_NOW)

    async def small() -> str:
        async with app.run_test(size=(60, 15)) as pilot:
            await pilot.pause()
            return app.export_screenshot()

    text = screen_text(asyncio.run(small()))
    # Below 70x20 no layout shows the figures whole: the screen says how large it needs to be instead.
    assert "enlarge the terminal to at least 70×20" in text, text


# ----- saving where nothing can be written


async def press_ctrl_s(app: DispatchLab, count: int = 1) -> tuple[list[Notification], str]:
    """Ctrl+S in an 80x24 dashboard; the first ``count`` notifications it raised (5 s at most), and the screen."""
    raised: list[Notification] = []

    def hook(message: Message) -> None:
        if isinstance(message, Notify):
            raised.append(message.notification)

    async with app.run_test(size=(80, 24), notifications=True, message_hook=hook) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+s")
        deadline = time.monotonic() + 5
        while len(raised) < count and time.monotonic() < deadline:
            await pilot.pause(0.05)
        await pilot.pause()
        assert app.is_running, "the dashboard runs on"
        return raised, screen_text(app.export_screenshot())


def saving_app(runs_dir: Path | None = None) -> DispatchLab:
    model = replay(session_snapshot().events)
    config = LabConfig(url="amqp://guest:***@localhost/%2F", runs_dir=runs_dir)
    return DispatchLab(config, model, None, clock=lambda: SNAPSHOT_NOW)


@pytest.mark.timeout(30)
@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a folder nobody may write (/sys)")
def test_ctrl_s_where_the_current_folder_cannot_be_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cd /sys`` and Ctrl+S: a PermissionError traceback and exit 1 before; now a toast that says why."""
    monkeypatch.chdir("/sys")
    app = saving_app()
    [toast], screen = asyncio.run(press_ctrl_s(app))
    assert toast.severity == "error" and not toast.markup, toast
    assert toast.message.startswith("Not saved: cannot write /sys/runs: "), toast.message
    assert "--runs-dir DIR" in toast.message and "Errno" not in toast.message, toast.message
    assert "Not saved" in screen, screen
    assert app.return_code in (None, 0)


@pytest.mark.timeout(30)
def test_ctrl_s_into_a_runs_dir_that_cannot_be_a_folder_says_the_path_as_text(tmp_path: Path) -> None:
    blocker = tmp_path / "[red]saves[b]"
    blocker.write_text("a file, not a folder")
    [toast], _ = asyncio.run(press_ctrl_s(saving_app(blocker / "runs")))
    assert toast.severity == "error" and not toast.markup, "a path is text, never markup"
    assert f"cannot write {blocker / 'runs'}" in toast.message and "Not a directory" in toast.message, toast.message


@pytest.mark.timeout(30)
def test_ctrl_s_whose_files_fail_on_their_thread_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The screenshot is written on the UI thread, the ledger and events on a thread worker: either may fail."""

    def disk_full(records: object, path: Path) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("tui.teaching.export.write_ledger_csv", disk_full)
    [toast], _ = asyncio.run(press_ctrl_s(saving_app(tmp_path / "runs")))
    [folder] = (tmp_path / "runs").iterdir()
    assert (folder / "screen.svg").is_file()
    assert toast.severity == "error" and not toast.markup, toast
    assert toast.message.startswith(f"Not saved: cannot write {folder / 'ledger.csv'}: No space left on device.")


@pytest.mark.timeout(30)
def test_runs_dir_chooses_where_ctrl_s_saves(tmp_path: Path) -> None:
    config = parse_config(["--broker", "url", "--runs-dir", str(tmp_path / "saves")], Console(file=io.StringIO()))
    assert config.runs_dir == tmp_path / "saves"
    assert parse_config(["--broker", "url"], Console(file=io.StringIO())).runs_dir is None, "runs/ here by default"
    [toast], _ = asyncio.run(press_ctrl_s(saving_app(config.runs_dir)))
    [folder] = (tmp_path / "saves").iterdir()
    assert sorted(f.name for f in folder.iterdir()) == ["ledger.csv", "screen.svg"]
    assert toast.severity == "information" and not toast.markup, toast
    assert toast.message.endswith(f"a screenshot to {folder}"), toast.message


def test_replay_takes_runs_dir_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = SessionLog(tmp_path / "events.jsonl")
    log.start()
    log.add(session_snapshot().events)
    log.close()
    built: list[DispatchLab] = []
    monkeypatch.setattr(DispatchLab, "run", lambda self, *args, **kwargs: built.append(self))
    monkeypatch.setattr("tui.launch.full_screen_refusal", lambda *args: None)  # pytest holds the terminal
    assert replay_main([str(tmp_path), "--runs-dir", str(tmp_path / "saves")]) == 0
    assert [app.config.runs_dir for app in built] == [tmp_path / "saves"]


# ----- not a terminal


def refused_without_a_terminal(lines: list[str], prog: str, which: str) -> None:
    assert len(lines) == 1, f"expected one line, got {lines}"
    assert lines[0].startswith(f"{prog}: "), lines[0]
    assert f"needs a terminal ({which})" in lines[0], lines[0]


@pytest.mark.timeout(60)
def test_dashboard_with_nothing_a_terminal_refuses_in_one_line(broker_url: str, queue_name: str) -> None:
    """``dispatch-lab < /dev/null > out.txt``: the full-screen UI went into the file for as long as it ran."""
    result = dashboard(["--queue", queue_name], broker_url, timeout=20)
    assert result.code == 2 and result.stdout == "" and "Traceback" not in result.output, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    refused_without_a_terminal(
        lines, "dispatch-lab", "standard input, standard output and standard error are not terminals"
    )
    for instead in ("`dispatch-lab compare`", "`dispatch-lab worker`", "`dispatch-lab new-task`"):
        assert instead in lines[0], lines[0]


@pytest.mark.timeout(60)
def test_no_private_node_boots_for_a_screen_that_cannot_open(queue_name: str) -> None:
    """Booting one takes 10-15 s here; the refusal comes first, before any broker is touched."""
    began = time.monotonic()
    result = run_module("tui.cli", ["--broker", "private", "--queue", queue_name], None, timeout=20)
    took = time.monotonic() - began
    assert result.code == 2 and "Traceback" not in result.output, result
    assert "Private RabbitMQ node" not in result.output and "private RabbitMQ node" not in result.output, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    refused_without_a_terminal(
        lines, "dispatch-lab", "standard input, standard output and standard error are not terminals"
    )
    assert took < 5, f"{took:.1f} s: a node was started"


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_dashboard_piped_into_cat_refuses_in_one_line(broker_url: str, queue_name: str) -> None:
    """``dispatch-lab | cat``: keys and screen on a terminal, standard output a pipe; the screen came out garbled."""
    terminal, side = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "tui.cli", "--broker", "url", "--queue", queue_name],
            cwd=ROOT,
            env=child_env(broker_url),
            stdin=side,
            stdout=subprocess.PIPE,
            stderr=side,
        )
        SPAWNED.append(proc)
        os.close(side)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("the dashboard opened on a pipe") from None
        assert proc.stdout is not None and proc.stdout.read() == b""
        proc.stdout.close()
        shown = b""
        while True:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # EIO: the other side is closed and everything was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(terminal)
    assert code == 2, shown
    # On a terminal the broker check shows a spinner first, erased again: the refusal is what stays.
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode())
    lines = [line for line in text.splitlines() if line.strip() and "Connecting to" not in line]
    assert "Traceback" not in text, text
    refused_without_a_terminal(lines, "dispatch-lab", "standard output is not one")
    assert "`dispatch-lab compare`" in lines[0], lines[0]


@pytest.mark.timeout(60)
def test_replay_without_a_terminal_refuses_in_one_line(tmp_path: Path) -> None:
    log = SessionLog(tmp_path / "events.jsonl")
    log.start()
    log.add(session_snapshot().events)
    log.close()
    result = run_module("tui.cli", ["replay", str(tmp_path)], None, timeout=20)
    assert result.code == 2 and result.stdout == "" and "Traceback" not in result.output, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    refused_without_a_terminal(
        lines, "dispatch-lab replay", "standard input, standard output and standard error are not terminals"
    )
    assert "events.jsonl" in lines[0], lines[0]
