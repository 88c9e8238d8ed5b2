"""Provides the worker pool: spawn, stop, kill and restart worker processes and read their events.

Each worker is ``python -u -m workers.worker --events`` with piped stdin,
stdout and stderr (an inherited terminal would corrupt the screen). The URL
travels in the environment, never in argv. Reader threads decode event lines
into the inbox; the app drains the inbox on a timer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO

from tui import observations as obs
from workers import protocol
from workers.settings import URL_ENV, DispatchMode, scrub

WORKER_NICENESS = 5
"""How much lower than the dashboard the workers run: on 2 busy cores the screen and keys come first."""


def _yield_cpu_to_the_ui(pid: int) -> None:
    """Lower a worker's CPU priority; the broker decides throughput, the UI must stay responsive."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICENESS)
    except (OSError, AttributeError):
        pass  # not permitted or not POSIX: the lab works the same, only less smoothly


class Inbox:
    """Thread-safe list of observations; threads put, the UI thread drains in batches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[obs.Observation] = []

    def put(self, item: obs.Observation) -> None:
        with self._lock:
            self._items.append(item)

    def put_many(self, items: list[obs.Observation]) -> None:
        with self._lock:
            self._items.extend(items)

    def drain(self) -> list[obs.Observation]:
        with self._lock:
            items, self._items = self._items, []
        return items

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class WorkerProcess:
    """A spawned worker and the threads reading it."""

    name: str
    process: subprocess.Popen[bytes]
    threads: list[threading.Thread] = field(default_factory=list)
    stdin_lock: threading.Lock = field(default_factory=threading.Lock)
    consuming: threading.Event = field(default_factory=threading.Event)
    """Set at its first ``ready`` event (its consumer is registered), or when its output ends."""

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def send(self, command: protocol.Command) -> bool:
        """Write a command line to the worker; False when it is gone."""
        stdin = self.process.stdin
        if stdin is None:
            return False
        with self.stdin_lock:
            try:
                stdin.write(protocol.encode_command(command).encode())
                stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                return False
        return True

    def close_stdin(self) -> None:
        with self.stdin_lock:
            try:
                if self.process.stdin is not None:
                    self.process.stdin.close()
            except OSError:
                pass


class PoolClosed(RuntimeError):
    """The pool was shut down: it starts no more workers."""


class WorkerPool:
    """The worker processes this dashboard started; all of them go when it goes."""

    MAX_WORKERS = 32

    def __init__(
        self,
        url: str,
        queue: str,
        inbox: Inbox,
        *,
        mode: DispatchMode,
        seconds_per_dot: float,
        durable: bool = True,
        heartbeat: int | None = None,
        python: str = sys.executable,
    ) -> None:
        self.url = url
        self.queue = queue
        self.inbox = inbox
        self.mode = mode
        self.seconds_per_dot = seconds_per_dot
        self.durable = durable
        self.heartbeat = heartbeat
        self.python = python
        self.processes: dict[str, WorkerProcess] = {}
        self._numbers = 0
        self._lock = threading.Lock()
        self._closed = False

    def next_name(self) -> str:
        self._numbers += 1
        return f"w{self._numbers}"

    def _argv(self, name: str) -> list[str]:
        argv = [
            self.python, "-u", "-m", "workers.worker", "--events", "--wait-for-broker",
            "--name", name,
            "--queue", self.queue,
            "--prefetch", str(self.mode.prefetch),
            "--ack", self.mode.ack,
            "--seconds-per-dot", repr(self.seconds_per_dot),
        ]  # fmt: skip
        if self.heartbeat is not None:
            argv += ["--heartbeat", str(self.heartbeat)]
        if not self.durable:
            argv.append("--transient")
        return argv

    def spawn(self, name: str | None = None) -> str:
        """Start a worker (a new one, or again under an old name); returns its name.

        Raises PoolClosed after ``shutdown``: a worker started then would outlive us.
        """
        env = dict(os.environ)
        env[URL_ENV] = self.url  # never argv: argv is world-readable in ps
        env["DISPATCH_LAB_PARENT"] = str(os.getpid())
        env["PYTHONUNBUFFERED"] = "1"
        with self._lock:  # spawns come from the UI thread and the starter thread
            if self._closed:
                raise PoolClosed("the worker pool is shut down")
            name = name or self.next_name()
            process = subprocess.Popen(
                self._argv(name),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                start_new_session=True,  # Ctrl+C in the dashboard's terminal is ours, not theirs
            )
            _yield_cpu_to_the_ui(process.pid)
            worker = WorkerProcess(name, process)
            self.inbox.put(obs.WorkerSpawned(name, time.time(), process.pid))
            assert process.stdout is not None and process.stderr is not None
            out = threading.Thread(target=self._read_events, args=(worker, process.stdout), daemon=True)
            err = threading.Thread(target=self._read_stderr, args=(worker, process.stderr), daemon=True)
            worker.threads = [out, err]
            self.processes[name] = worker
        # stderr's reader first: the events reader joins it once stdout ends, which for a child
        # that dies at once can happen before the next line runs ("cannot join thread before
        # it is started", and WorkerExited is never reported).
        err.start()
        out.start()
        return name

    def spawn_in_order(self, count: int, timeout: float = 30.0) -> threading.Thread:
        """Start ``count`` workers on a thread, each once the one before consumes.

        The broker hands out round-robin deliveries in the order its consumers
        registered. Workers started together register in whatever order they win
        the race, so w2 could take task 1; one at a time, w1 always comes first.
        """

        def run() -> None:
            for _ in range(count):
                try:
                    name = self.spawn()
                except PoolClosed:
                    return
                self.processes[name].consuming.wait(timeout)

        starter = threading.Thread(target=run, name="spawn-in-order", daemon=True)
        starter.start()
        return starter

    def _read_events(self, worker: WorkerProcess, stream: IO[bytes]) -> None:
        # Whatever the pipe holds, in one read, into the inbox in one put: per-line reads and
        # puts cost this thread GIL time the UI thread needs under a flood of events.
        inbox, name, decode = self.inbox, worker.name, protocol.decode
        read = getattr(stream, "read1", stream.read)
        pending = b""
        while chunk := read(1 << 16):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            batch: list[obs.Observation] = []
            for line in lines:
                event = decode(line)
                if event is None:
                    if line.strip():
                        batch.append(obs.WorkerGarbage(name, time.time(), self._garbage_text(line)))
                    continue
                batch.append(event)
                if type(event) is protocol.Ready:
                    worker.consuming.set()
            inbox.put_many(batch)
        if pending.strip():
            inbox.put(obs.WorkerGarbage(name, time.time(), self._garbage_text(pending)))
        worker.consuming.set()  # it will never consume: nobody waits for it any longer
        code = worker.process.wait()
        for thread in worker.threads[1:]:
            thread.join(timeout=1.0)  # its last stderr lines belong before the exit
        inbox.put(obs.WorkerExited(name, time.time(), code))

    def _garbage_text(self, line: bytes) -> str:
        return scrub(line.decode("utf-8", "backslashreplace").rstrip(), self.url)[:200]

    def _read_stderr(self, worker: WorkerProcess, stream: IO[bytes]) -> None:
        for line in stream:
            text = scrub(line.decode("utf-8", "backslashreplace").rstrip(), self.url)
            if text:
                self.inbox.put(obs.WorkerStderr(worker.name, time.time(), text[:300]))

    def get(self, name: str) -> WorkerProcess | None:
        return self.processes.get(name)

    def running(self) -> list[str]:
        with self._lock:  # a snapshot: the starter thread may be adding one
            workers = list(self.processes.items())
        return [name for name, w in workers if w.running]

    def pids(self) -> set[int]:
        """The process ids of every worker started, running or not."""
        with self._lock:
            return {w.process.pid for w in self.processes.values()}

    def kill(self, name: str) -> bool:
        """SIGKILL: the socket closes and the broker requeues what the worker held."""
        worker = self.processes.get(name)
        if worker is None or not worker.running:
            return False
        self.inbox.put(obs.StopRequested(name, time.time(), kill=True))
        try:
            worker.process.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def stop(self, name: str) -> bool:
        """Graceful: finish the current task, give back the waiting ones, exit."""
        worker = self.processes.get(name)
        if worker is None or not worker.running:
            return False
        self.inbox.put(obs.StopRequested(name, time.time(), kill=False))
        return worker.send(protocol.Stop(now=False))

    def set_mode(self, mode: DispatchMode) -> list[str]:
        """Send a live mode change to every running worker; new workers start in it too."""
        self.mode = mode
        reached = []
        for name, worker in list(self.processes.items()):
            if worker.running and worker.send(protocol.SetMode(mode.prefetch, mode.ack)):
                reached.append(name)
        return reached

    def shutdown(self, timeout: float = 3.0) -> None:
        """Stop every worker: EOF on stdin first, SIGTERM, then SIGKILL for any straggler."""
        with self._lock:
            self._closed = True
            workers = list(self.processes.values())
        for worker in workers:
            worker.close_stdin()
        deadline = time.monotonic() + timeout
        for worker in workers:
            remaining = deadline - time.monotonic()
            try:
                worker.process.wait(timeout=max(0.05, remaining))
            except subprocess.TimeoutExpired:
                worker.process.terminate()
        grace = time.monotonic() + 1.0  # one second of SIGTERM grace for all: hung workers must not add up
        for worker in workers:
            try:
                worker.process.wait(timeout=max(0.05, grace - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(timeout=5.0)
