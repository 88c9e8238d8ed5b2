"""WorkerPool against the real broker: spawn, stop, kill, start order, secrets, bad output, shutdown."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import pika
import pytest

from tests.helpers import publish, wait_until
from tui.engine.pool import WORKER_NICENESS, Inbox, PoolClosed, WorkerOutput, WorkerPool, head_lines, lines_in
from tui.model import observations as obs
from tui.model.state import Model
from workers import protocol
from workers.settings import DispatchMode, url_parts

T = TypeVar("T")

PASSWORD = "Zq9-distinctive-PW"
"""A password no other part of the system could print by accident."""


class Observed:
    """Drains a pool's inbox into one ordered list."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self.items: list[obs.Observation] = []

    def all(self) -> list[obs.Observation]:
        self.items += self.inbox.drain()
        return self.items

    def of(self, kind: type[T], worker: str | None = None) -> list[T]:
        return [
            i for i in self.all() if isinstance(i, kind) and (worker is None or getattr(i, "worker", None) == worker)
        ]

    def wait(self, kind: type[T], worker: str | None = None, count: int = 1, timeout: float = 20.0) -> list[T]:
        """At least ``count`` observations of ``kind`` (from ``worker``); fails with what arrived."""

        def enough() -> list[T] | None:
            found = self.of(kind, worker)
            return found if len(found) >= count else None

        try:
            return wait_until(enough, timeout, "")
        except AssertionError:
            seen = "\n  ".join(repr(i) for i in self.items[-30:])
            raise AssertionError(
                f"no {count} x {kind.__name__} from {worker or 'any'} in {timeout}s:\n  {seen}"
            ) from None


ROUND_ROBIN = DispatchMode(0, "manual")

PoolFactory = Callable[[str, str], tuple[WorkerPool, Observed]]


def make_pool(url: str, queue: str) -> tuple[WorkerPool, Observed]:
    inbox = Inbox()
    return WorkerPool(url, queue, inbox, mode=ROUND_ROBIN, seconds_per_dot=0.05), Observed(inbox)


@pytest.fixture
def pools() -> Iterator[PoolFactory]:
    """Makes pools; each is shut down at teardown, pass or fail."""
    made: list[WorkerPool] = []

    def factory(url: str, queue: str) -> tuple[WorkerPool, Observed]:
        pool, observed = make_pool(url, queue)
        made.append(pool)
        return pool, observed

    yield factory
    for pool in made:
        pool.shutdown(timeout=1.0)


def fake_worker(monkeypatch: pytest.MonkeyPatch, script: str, *args: str) -> None:
    """Make the pool start ``python -c script args`` instead of the real worker."""
    monkeypatch.setattr(WorkerPool, "_argv", lambda self, name: [sys.executable, "-u", "-c", script, name, *args])


# ----- spawn, stop, kill, restart


def test_spawn_stop_kill_and_respawn(broker_url: str, queue_name: str, pools: PoolFactory) -> None:
    pool, seen = pools(broker_url, queue_name)
    assert (pool.spawn(), pool.spawn()) == ("w1", "w2")
    ready = {r.worker: r for r in seen.wait(protocol.Ready, count=2)}
    spawned = {s.worker: s.pid for s in seen.of(obs.WorkerSpawned)}
    assert {name: r.pid for name, r in ready.items()} == spawned
    assert all((r.queue, r.prefetch, r.ack) == (queue_name, 0, "manual") for r in ready.values())
    assert sorted(pool.running()) == ["w1", "w2"] and pool.pids() == set(spawned.values())

    # stop: graceful, exit code 0, and only once
    assert pool.stop("w1")
    assert seen.wait(obs.WorkerExited, "w1")[0].code == 0
    assert [s.kill for s in seen.of(obs.StopRequested, "w1")] == [False]
    assert seen.of(protocol.Stopped, "w1")[0].reason == "stop"
    assert not pool.stop("w1") and not pool.kill("w1")

    # kill: SIGKILL, and only once
    assert pool.kill("w2")
    assert seen.wait(obs.WorkerExited, "w2")[0].code == -9
    assert [s.kill for s in seen.of(obs.StopRequested, "w2")] == [True]
    assert not seen.of(protocol.Stopped, "w2"), "a SIGKILLed worker cannot say goodbye"
    assert pool.running() == [] and not pool.kill("w2")

    # a live mode change reaches the running workers; a respawned one starts in it
    assert pool.spawn("w1") == "w1"
    seen.wait(protocol.Ready, "w1", count=2)
    assert pool.set_mode(DispatchMode(3, "manual")) == ["w1"]
    mode = seen.wait(protocol.Mode, "w1")[0]
    assert (mode.prefetch, mode.ack) == (3, "manual")
    assert pool.spawn() == "w3"
    assert seen.wait(protocol.Ready, "w3")[0].prefetch == 3
    pids = {s.worker: s.pid for s in seen.of(obs.WorkerSpawned)}
    assert pids["w1"] != spawned["w1"]

    # the folded model tells the same story
    model = Model(queue=queue_name)
    model.apply_all(seen.all())
    assert model.workers["w1"].restarts == 1 and model.workers["w1"].status == "idle"
    assert model.workers["w2"].status == "killed"


def test_spawn_in_order_makes_round_robin_start_with_w1(broker_url: str, queue_name: str, pools: PoolFactory) -> None:
    """Workers started together register with the broker in a random order; one at a time, in name order."""
    pool, seen = pools(broker_url, queue_name)
    pool.spawn_in_order(3)
    ready = seen.wait(protocol.Ready, count=3)
    spawned = {s.worker: s.ts for s in seen.of(obs.WorkerSpawned)}
    assert [r.worker for r in ready] == ["w1", "w2", "w3"]
    assert spawned["w2"] >= ready[0].ts and spawned["w3"] >= ready[1].ts
    ids = publish(broker_url, queue_name, [f"task {n}" for n in range(1, 7)])
    seen.wait(protocol.Done, count=6)
    got = {name: [ids.index(r.msg_id or "") + 1 for r in seen.of(protocol.Received, name)] for name in spawned}
    assert got == {"w1": [1, 4], "w2": [2, 5], "w3": [3, 6]}


def test_no_spawn_after_shutdown(broker_url: str, queue_name: str) -> None:
    pool, _ = make_pool(broker_url, queue_name)
    pool.shutdown()
    with pytest.raises(PoolClosed):
        pool.spawn()
    assert pool.processes == {}


# ----- the URL's password stays out of argv and output


def _mgmt(broker_url: str, method: str, path: str, body: dict[str, str] | None = None) -> None:
    parts = url_parts(broker_url)
    token = base64.b64encode(f"{parts.user}:{parts.password}".encode()).decode()
    request = urllib.request.Request(
        f"http://{parts.host}:15672/api{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def dedicated_user(broker_url: str) -> Iterator[str]:
    """A broker user with a distinctive password, deleted afterwards; yields its AMQP URL.

    Made through the management API when it answers (milliseconds), else with
    rabbitmqctl (about 2 s a call: it boots an Erlang VM).
    """
    user = f"dlab_test_{uuid.uuid4().hex[:8]}"
    parts = url_parts(broker_url)
    vhost = quote(parts.vhost, safe="")
    try:
        _mgmt(broker_url, "PUT", f"/users/{user}", {"password": PASSWORD, "tags": ""})
        _mgmt(broker_url, "PUT", f"/permissions/{vhost}/{user}", {"configure": ".*", "write": ".*", "read": ".*"})
        via_api = True
    except (urllib.error.URLError, OSError):
        try:
            _rabbitmqctl("add_user", user, PASSWORD)
            _rabbitmqctl("set_permissions", "-p", parts.vhost, user, ".*", ".*", ".*")
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"cannot create a broker user here: {exc}")
        via_api = False
    try:
        yield f"amqp://{user}:{PASSWORD}@{parts.host}:{parts.port}/{vhost}"
    finally:
        if via_api:
            _mgmt(broker_url, "DELETE", f"/users/{user}")
        else:
            _rabbitmqctl("delete_user", user)


def test_password_stays_out_of_argv_and_output(
    broker_url: str,
    dedicated_user: str,
    queue_factory: Callable[[], str],
    pools: PoolFactory,
) -> None:
    good_queue, bad_queue = queue_factory(), queue_factory()
    declare_transient(broker_url, bad_queue)
    good, good_seen = pools(dedicated_user, good_queue)
    bad, bad_seen = pools(dedicated_user, bad_queue)
    names = [good.spawn(), bad.spawn()]
    workers = [good.processes[names[0]], bad.processes[names[1]]]
    for worker in workers:
        argv = Path(f"/proc/{worker.process.pid}/cmdline").read_bytes()
        assert PASSWORD.encode() not in argv, argv
        assert b"amqp://" not in argv, argv
    good_seen.wait(protocol.Ready)
    # It travels in the environment (readable by the same user only), so the worker did log in with it.
    # Read once it is ready: a process that has ended shows an empty environ (seen once under load).
    environ = Path(f"/proc/{workers[0].process.pid}/environ").read_bytes()
    assert PASSWORD.encode() in environ, (workers[0].process.poll(), len(environ))
    publish(broker_url, good_queue, ["one task."])
    good_seen.wait(protocol.Done)
    assert bad_seen.wait(obs.WorkerExited)[0].code == 1
    good.shutdown(timeout=2.0)
    good_seen.wait(obs.WorkerExited)
    said = [repr(item) for item in good_seen.all() + bad_seen.all()]
    assert any("different 'durable'" in line for line in said), said  # the failure was explained...
    assert not [line for line in said if PASSWORD in line]  # ...without the secret


def declare_transient(url: str, queue: str) -> None:
    """Declare ``queue`` non-durable, so a worker's durable declare of it fails with 406."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(queue=queue, durable=False)
    finally:
        connection.close()


# ----- a worker that fails or misbehaves


def test_worker_dying_at_start_reports_stderr_then_exit(broker_url: str, queue_name: str, pools: PoolFactory) -> None:
    declare_transient(broker_url, queue_name)
    pool, seen = pools(broker_url, queue_name)
    pool.spawn()
    exited = seen.wait(obs.WorkerExited)[0]
    assert exited.code == 1
    items = seen.all()
    stderr = [i for i in items if isinstance(i, obs.WorkerStderr)]
    assert stderr and "already exists with a different 'durable'" in stderr[0].line, items
    assert max(items.index(s) for s in stderr) < items.index(exited), "stderr must arrive before the exit"
    assert seen.of(protocol.Error)[0].message.startswith(f"Queue {queue_name!r} already exists")
    assert seen.of(protocol.Stopped)[0].reason == "error"
    model = Model(queue=queue_name)
    model.apply_all(items)
    worker = model.workers["w1"]
    assert (worker.status, worker.exit_code) == ("exited", 1)
    assert any("durable" in line for line in worker.stderr)


GARBAGE_SCRIPT = """
import os, sys
out = sys.stdout.buffer
out.write(b"this is not json\\n")
out.write(b"\\xff\\xfe binary \\x00 junk\\n")
out.write(b'{"v": 1, "event": "ready"}\\n')
out.write(b"x" * 5000 + b"\\n")
out.write(("my url is " + os.environ["AMQP_URL"] + "\\n").encode())
out.write(sys.argv[2].encode() + b"\\n")
out.write(b"no newline at the end")
out.flush()
"""


def test_garbage_on_stdout_never_crashes_the_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    ready = protocol.Ready("w1", time.time(), 4242, "q", 1, "manual")
    fake_worker(monkeypatch, GARBAGE_SCRIPT, protocol.encode(ready).strip())
    pool, seen = make_pool(f"amqp://someone:{PASSWORD}@127.0.0.1:5672/%2F", "q")
    try:
        pool.spawn()
        assert seen.wait(obs.WorkerExited)[0].code == 0
    finally:
        pool.shutdown(timeout=1.0)
    items = seen.all()
    garbage = [i.line for i in items if isinstance(i, obs.WorkerGarbage)]
    assert len(garbage) == 6, garbage
    assert garbage[0] == "this is not json"
    assert "junk" in garbage[1] and "\\xff" in garbage[1]
    assert len(garbage[3]) == 200
    assert garbage[4] == "my url is amqp://someone:***@127.0.0.1:5672/%2F"
    assert garbage[5] == "no newline at the end"
    # The valid event after the junk still arrived, in its place.
    assert [type(i).__name__ for i in items if not isinstance(i, obs.WorkerGarbage)] == [
        "WorkerSpawned",
        "Ready",
        "WorkerExited",
    ]
    assert seen.of(protocol.Ready) == [ready]
    model = Model()
    model.apply_all(items)
    assert model.garbage == 6 and model.workers["w1"].garbage == 6


STUBBORN_SCRIPT = """
import signal, sys, time
if sys.argv[2] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if sys.argv[2] == "polite":
    print("up", flush=True)
    sys.stdin.read()
    sys.exit(0)
print("up", flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [("polite", 0), ("ignore-eof", -15), ("ignore-term", -9)],
)
def test_shutdown_ends_every_worker_in_time(monkeypatch: pytest.MonkeyPatch, behaviour: str, code: int) -> None:
    """EOF on stdin first, then SIGTERM, then SIGKILL: even a worker deaf to both goes."""
    fake_worker(monkeypatch, STUBBORN_SCRIPT, behaviour)
    pool, seen = make_pool("amqp://guest:guest@127.0.0.1:5672/%2F", "q")
    timeout = 1.0
    try:
        pool.spawn()
        seen.wait(obs.WorkerGarbage)  # "up": its signal handler is in place
        started = time.monotonic()
        pool.shutdown(timeout=timeout)
        elapsed = time.monotonic() - started
    finally:
        for worker in pool.processes.values():
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
    process = pool.processes["w1"].process
    assert process.returncode == code
    assert seen.wait(obs.WorkerExited)[0].code == code
    # the EOF wait, one second of SIGTERM grace, then SIGKILL at once
    budget = {0: 0.5, -15: timeout + 0.5, -9: timeout + 1.0 + 0.5}[code]
    assert elapsed < budget + 1.0, f"shutdown took {elapsed:.2f}s for a {behaviour} worker"


def test_shutdown_grace_is_shared_by_all_stragglers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hung workers (SIGSTOP, or deaf to SIGTERM) cost the grace second once, not once each."""
    fake_worker(monkeypatch, STUBBORN_SCRIPT, "ignore-term")
    pool, seen = make_pool("amqp://guest:guest@127.0.0.1:5672/%2F", "q")
    try:
        for _ in range(4):
            pool.spawn()
        seen.wait(obs.WorkerGarbage, count=4)
        started = time.monotonic()
        pool.shutdown(timeout=0.5)
        elapsed = time.monotonic() - started
    finally:
        for worker in pool.processes.values():
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
    assert [w.process.returncode for w in pool.processes.values()] == [-9] * 4
    assert elapsed < 0.5 + 1.0 + 1.0, f"shutdown took {elapsed:.2f}s for 4 workers deaf to SIGTERM"


FRAGMENTS_SCRIPT = """
import json, sys, time
name = sys.argv[1]
out = sys.stdout.buffer
for n in range(1, 201):
    line = json.dumps({"v": 1, "event": "started", "worker": name, "ts": time.time(),
                       "tag": n, "msg_id": f"m-{n}", "seconds": 0.0}).encode() + b"\\n"
    if n % 50 == 0:  # a line cut in three writes, with pauses the reader sees
        for part in (line[:7], line[7:30], line[30:]):
            out.write(part)
            out.flush()
            time.sleep(0.02)
    else:
        out.write(line)
out.flush()
"""


def test_one_reader_thread_reads_every_worker_and_mends_lines_cut_across_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three workers, lines cut in pieces: every event arrives whole, in order, through a single thread."""
    fake_worker(monkeypatch, FRAGMENTS_SCRIPT)
    pool, seen = make_pool("amqp://guest:guest@127.0.0.1:5672/%2F", "q")
    before = {t for t in threading.enumerate() if t.name == "worker-events"}
    try:
        for _ in range(3):
            pool.spawn()
        seen.wait(obs.WorkerExited, count=3)
        readers = [t for t in threading.enumerate() if t.name == "worker-events" and t not in before]
        assert len(readers) == 1
    finally:
        pool.shutdown(timeout=1.0)
    for name in ("w1", "w2", "w3"):
        started = seen.of(protocol.Started, name)
        assert [s.tag for s in started] == list(range(1, 201)), name
        assert all(s.msg_id == f"m-{s.tag}" for s in started)
    assert not seen.of(obs.WorkerGarbage)
    readers[0].join(5)
    assert not readers[0].is_alive(), "the reader thread outlived the pool's shutdown"


FLOOD_SCRIPT = """
import json, sys, time
name = sys.argv[1]
out = sys.stdout.buffer
for n in range(1, 30001):
    out.write(json.dumps({"v": 1, "event": "started", "worker": name, "ts": time.time(),
                          "tag": n, "msg_id": f"m-{n}", "seconds": 0.0}).encode() + b"\\n")
out.flush()
"""


def test_a_backlog_nobody_decodes_stops_the_reading_until_it_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory stays bounded: past BACKLOG_BYTES the pipes stay full and the worker waits on its write."""
    import tui.engine.pool

    monkeypatch.setattr(tui.engine.pool, "BACKLOG_BYTES", 64 * 1024)
    fake_worker(monkeypatch, FLOOD_SCRIPT)
    inbox = Inbox()
    pool = WorkerPool("amqp://guest:guest@127.0.0.1:5672/%2F", "q", inbox, mode=ROUND_ROBIN, seconds_per_dot=0)
    try:
        pool.spawn()
        time.sleep(1.5)  # the script alone writes its 30,000 lines (about 4 MB) in well under a second
        held = inbox.undecoded
        assert 64 * 1024 < held <= 64 * 1024 + tui.engine.pool.PIPE_BYTES + 65536, held
        assert pool.processes["w1"].running, "the worker should be waiting on a full pipe"
        seen: list[obs.Observation] = []
        deadline = time.monotonic() + 20
        while not any(isinstance(i, obs.WorkerExited) for i in seen):
            seen += inbox.drain()  # decoding frees the reader again
            assert time.monotonic() < deadline, f"{len(seen)} observations after 20 s"
            time.sleep(0.01)
    finally:
        pool.shutdown(timeout=1.0)
    assert [s.tag for s in seen if isinstance(s, protocol.Started)] == list(range(1, 30001))
    assert inbox.undecoded == 0


def test_head_lines_cuts_a_read_at_a_line_end_and_keeps_every_byte() -> None:
    data = b"".join(f'{{"n":{n}}}\n'.encode() for n in range(10))
    output = WorkerOutput("w1", data)
    head, rest = head_lines(output, 3)
    assert isinstance(head, WorkerOutput) and isinstance(rest, WorkerOutput)
    assert (head.worker, rest.worker) == ("w1", "w1")
    assert head.data == data[: data.index(b'{"n":3}')] and head.data + rest.data == data
    assert (lines_in(head), lines_in(rest)) == (3, 7)
    assert head_lines(output, 10) == (output, None)  # all of it: nothing left
    assert head_lines(output, 50) == (output, None)
    unfinished = WorkerOutput("w1", data + b'{"n":')  # a garbage tail without its newline stays with the rest
    assert head_lines(unfinished, 10)[1] == WorkerOutput("w1", b'{"n":')
    other = obs.WorkerExited("w1", 1.0, 0)
    assert head_lines(other, 1) == (other, None)


def test_tasks_lines_count_and_cut_by_their_items() -> None:
    """A ``tasks`` line weighs what its items make, so a fold slice never takes hundreds of events as one line."""
    done = [protocol.item_done(1.0, tag, f"m-{tag}", True) for tag in range(1, 101)]
    tasks = protocol.encode_tasks('"w1"', done).encode()
    v1 = protocol.encode(protocol.Alive("w1", 1.0, 60)).encode()
    output = WorkerOutput("w1", tasks + v1 + tasks + v1)
    assert lines_in(output) == 2 * 101 + 2
    head, rest = head_lines(output, 150)  # the first line is 101 and the next 1: the cut comes after the third
    assert isinstance(head, WorkerOutput) and isinstance(rest, WorkerOutput)
    assert head.data == tasks + v1 + tasks and rest.data == v1
    assert head_lines(output, 101) == (WorkerOutput("w1", tasks), WorkerOutput("w1", v1 + tasks + v1))
    assert head_lines(output, 1)[0] == WorkerOutput("w1", tasks), "at least one whole line"


def test_a_worker_runs_in_a_session_of_its_own_below_our_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    """Terminal signals (Ctrl+C) go to the dashboard's group only; the worker and its session yield the CPU to the UI.

    Where Linux's autogroup scheduler makes each session a group (the CPU is shared between
    groups first, niceness counts only inside one), the worker's session has the lowest priority.
    """
    from tui.engine.pool import AUTOGROUP_NICENESS

    fake_worker(monkeypatch, STUBBORN_SCRIPT, "polite")
    pool, seen = make_pool("amqp://guest:guest@127.0.0.1:5672/%2F", "q")
    try:
        pool.spawn()
        seen.wait(obs.WorkerGarbage)  # "up"
        pid = pool.processes["w1"].process.pid
        assert os.getsid(pid) == os.getpgid(pid) == pid != os.getsid(0)
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICENESS)
        group = Path(f"/proc/{pid}/autogroup")
        if group.exists():  # Linux with autogroup built in (on or off, the setting is kept)
            assert group.read_text().split()[-1] == str(AUTOGROUP_NICENESS), group.read_text()
    finally:
        pool.shutdown(timeout=1.0)


# ----- long runs leak nothing


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(120)
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc/self/fd")
def test_fifty_killed_and_replaced_workers_leave_no_descriptor_or_zombie(
    broker_url: str, queue_name: str, pools: PoolFactory
) -> None:
    """Each killed worker's three pipes close once its output is read, and it is reaped (2 fds a kill leaked)."""
    pool, seen = pools(broker_url, queue_name)
    cycles, at_once = 50, 2

    def kill_when_ready(names: list[str]) -> None:
        for name in names:
            assert pool.processes[name].consuming.wait(20), f"{name} never got ready"
            assert pool.kill(name)

    # A first cycle starts the reader thread, its selector and wake pipe: descriptors kept for good.
    kill_when_ready([pool.spawn()])
    seen.wait(obs.WorkerExited, count=1)
    before = open_descriptors()
    began = time.monotonic()
    for _ in range(cycles // at_once):  # two at a time: a worker's start-up is mostly waiting on the broker
        kill_when_ready([pool.spawn() for _ in range(at_once)])
    exits = seen.wait(obs.WorkerExited, count=cycles + 1, timeout=30)
    took = time.monotonic() - began
    assert all(e.code == -9 for e in exits), [e.code for e in exits]
    assert len(seen.of(protocol.Ready)) == cycles + 1, "each was killed once consuming"
    try:
        after = wait_until(lambda: (n := open_descriptors()) <= before + 2 and n, 10, "the descriptors back")
    except AssertionError:
        raise AssertionError(f"{open_descriptors() - before} descriptors more after {cycles} kills") from None
    print(f"\n{cycles} kill-and-replace cycles in {took:.1f} s; descriptors {before} -> {after}")
    processes = list(pool.processes.values())
    assert len(processes) == cycles + 1
    assert all(w.process.returncode == -9 for w in processes), "every worker reaped"
    assert not [w.name for w in processes if Path(f"/proc/{w.process.pid}").exists()], "no zombie left"
