"""Provides the worker pool: spawn, stop, kill and restart worker processes and read their events.

Each worker is ``python -u -m workers.worker --events`` with piped stdin,
stdout and stderr (an inherited terminal would corrupt the screen). The URL
travels in the environment, never in argv. One reader thread puts each
worker's complete output lines into the inbox as they arrive, undecoded; the
app drains the inbox on a timer and decodes them there, in slices it folds
between key presses. Decoding on the reader thread would make it take turns
with the UI thread for the GIL under a flood of events, and a key press would
wait behind it.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

from tui.model import observations as obs
from workers import protocol
from workers.settings import URL_ENV, DispatchMode, FailMode, QueueSpec, scrub

READ_PAUSE = 0.005
"""Seconds the event reader waits after a read: the UI folds at 8 Hz, so nothing is shown later."""
BACKLOG_BYTES = 32 << 20
"""Undecoded worker output the dashboard holds at most (about 80,000 tasks' lines) before it stops reading."""
PIPE_BYTES = 1 << 20
"""Asked-for capacity of each worker's event pipe (Linux): room for about 2,700 events during a pause."""

WORKER_NICENESS = 15
"""How much lower than the dashboard the workers run: on 2 busy cores the screen and keys come first.

Measured in a 20,000-task drain on 2 cores: at 5 the UI thread still waited for the CPU
22-47 % of the time it was ready to run, at 15 3-18 %, and the drain took as long.
"""


def widen_pipe(stream: IO[bytes]) -> None:
    """Give a pipe room for PIPE_BYTES (Linux; elsewhere, or past the system's limit, it keeps its size)."""
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass


AUTOGROUP_NICENESS = 19
"""Where Linux groups each session for the scheduler (autogroup), a worker's session runs at this niceness.

The CPU is shared between sessions first and niceness counts only inside one, so each
worker has a session of the lowest priority, and the dashboard's own holds little more than
the UI. Measured under an 8-worker flood on 2 cores (ctrl+n while 8 workers drain, 3 alternating
pairs): median key latency 6-9 ms instead of 13-17, the UI thread's wait for a core per press
4.5-6 ms instead of 8-12, and the 100,000-task drains as long (docs/benchmarks.md).
"""


def _yield_cpu_to_the_ui(pid: int) -> None:
    """Lower a worker's CPU priority, and its session's; the broker decides throughput, the UI must stay responsive.

    Raising a niceness needs no privilege, for a process or for its session's group.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICENESS)
    except (OSError, AttributeError):
        pass  # not permitted or not POSIX: the lab works the same, only less smoothly
    try:
        with open(f"/proc/{pid}/autogroup", "w") as group:
            group.write(str(AUTOGROUP_NICENESS))
    except OSError:
        pass  # no autogroup (another system, or the kernel's setting off): the niceness above is all that counts


@dataclass(frozen=True, slots=True)
class WorkerOutput:
    """Complete lines from one worker's stdout, as read: decoded by whoever drains the inbox."""

    worker: str
    data: bytes


Arrival = obs.Observation | WorkerOutput
"""What threads put in the inbox: observations, and worker output still to decode."""

Slice = tuple[list[obs.Observation], list[Arrival]]
"""Decoded observations, and what a session log keeps of them (clean output stays as it came)."""


def _as_text(line: bytes) -> str:
    return line.decode("utf-8", "backslashreplace").rstrip()


def lines_in(item: Arrival) -> int:
    """How many observations an arrival makes, as the protocol counts a worker's output (protocol.events_in)."""
    return protocol.events_in(item.data) if type(item) is WorkerOutput else 1


def head_lines(item: Arrival, count: int) -> tuple[Arrival, Arrival | None]:
    """A worker output's first lines worth ``count`` observations (at least one line) and the rest.

    The protocol says where to cut (protocol.cut_after_events); the rest is None when
    no more is left; other arrivals come whole.
    """
    if type(item) is not WorkerOutput:
        return item, None
    cut = protocol.cut_after_events(item.data, count)
    if cut is None:
        return item, None
    return WorkerOutput(item.worker, item.data[:cut]), WorkerOutput(item.worker, item.data[cut:])


def complete_lines(pending: bytes, chunk: bytes, longest: int) -> tuple[bytes, bytes]:
    """Split what a pipe held so far into its complete lines and the unfinished rest.

    A rest of ``longest`` bytes or more without a newline is no event (bodies are capped):
    it comes back as if complete, to be decoded as garbage, rather than held without end.
    """
    data = pending + chunk if pending else chunk
    cut = data.rfind(b"\n") + 1
    if cut == 0 and len(data) >= longest:
        cut = len(data)
    return (data, b"") if cut == len(data) else (data[:cut], data[cut:])


class Inbox:
    """Thread-safe list of arrivals; threads put, the UI thread takes them in batches and decodes them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Arrival] = []
        self._undecoded = 0
        self.garbage_text: Callable[[bytes], str] = _as_text
        """Turns a line that is no event into text to show; the pool sets one that masks its password."""

    def put(self, item: Arrival) -> None:
        with self._lock:
            self._items.append(item)

    def put_many(self, items: Sequence[Arrival]) -> None:
        size = sum(len(item.data) for item in items if type(item) is WorkerOutput)
        with self._lock:
            self._items.extend(items)
            self._undecoded += size

    @property
    def undecoded(self) -> int:
        """Bytes of worker output put here and not decoded yet (in here, or taken and waiting)."""
        return self._undecoded

    def take(self) -> list[Arrival]:
        """Everything that arrived so far, undecoded."""
        with self._lock:
            items, self._items = self._items, []
        return items

    def drain(self) -> list[obs.Observation]:
        """Everything that arrived so far, decoded."""
        return [item for part, _ in self.slices(self.take()) for item in part]

    def slices(self, items: list[Arrival], size: int = 2000) -> Iterator[Slice]:
        """Decode ``items`` in order, a slice of about ``size`` observations at a time."""
        part: list[obs.Observation] = []
        logged: list[Arrival] = []
        for item in items:
            if type(item) is WorkerOutput:
                events, clean = self._decode(item)
                part += events
                if clean:
                    logged.append(item)  # its lines, verbatim, are the protocol form a log keeps
                else:
                    logged += events  # garbage may hold anything: a log keeps only its masked text
            else:
                assert not isinstance(item, WorkerOutput)
                part.append(item)
                logged.append(item)
            if len(part) >= size:
                yield part, logged
                part, logged = [], []
        if part or logged:
            yield part, logged

    def _decode(self, output: WorkerOutput) -> tuple[list[obs.Observation], bool]:
        """The events in a worker's lines, and whether all were events.

        A line that is none becomes a WorkerGarbage (counted, never fatal); blank lines are skipped.
        """
        with self._lock:
            self._undecoded -= len(output.data)
        decoded, clean = protocol.decode_lines(output.data)
        if clean:
            return decoded, True  # type: ignore[return-value]  # clean: events only
        now = time.time()
        garbage = self.garbage_text
        return [
            obs.WorkerGarbage(output.worker, now, garbage(item)[:200]) if isinstance(item, bytes) else item
            for item in decoded
        ], False

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
    exit_reported: threading.Event = field(default_factory=threading.Event)
    """Set once its ``WorkerExited`` is in the inbox: a worker started again under its name comes after it."""

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


class EventReader:
    """One thread that reads every worker's event pipe and puts the complete lines in the inbox.

    One thread for all workers, not one each, and no decoding here: under a flood
    of events every thread wanting the GIL takes turns with the UI thread, and a
    key press waits behind them. Whatever the ready pipes hold goes into the inbox
    in one put.
    """

    CHUNK = PIPE_BYTES
    LONGEST_LINE = 1 << 20
    """A worker's line this long is no event (bodies are capped): it is passed on as garbage."""

    def __init__(self, inbox: Inbox, finished: Callable[[WorkerProcess], None]) -> None:
        self.inbox = inbox
        self._finished = finished
        self._lock = threading.Lock()
        self._added: list[tuple[WorkerProcess, IO[bytes]]] = []
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = -1, -1
        self._closing = False
        self.unlimited = False
        """Read whatever the backlog: set when the pool shuts down, so that no worker waits on a write."""

    def add(self, worker: WorkerProcess, stream: IO[bytes]) -> None:
        """Read this worker's stdout from now on (any thread); starts the reader thread the first time."""
        with self._lock:
            self._added.append((worker, stream))
            if self._thread is None:
                self._selector = selectors.DefaultSelector()
                self._wake_r, self._wake_w = os.pipe()
                self._selector.register(self._wake_r, selectors.EVENT_READ, None)
                self._thread = threading.Thread(target=self._run, name="worker-events", daemon=True)
                self._thread.start()
                return
        os.write(self._wake_w, b"+")

    def close(self) -> None:
        """Let the thread end once the pipes it reads have all ended (after the pool's shutdown)."""
        with self._lock:
            self._closing = True
            if self._thread is None:
                return
        try:
            os.write(self._wake_w, b"+")
        except OSError:
            pass  # already ended

    def _run(self) -> None:
        selector = self._selector
        assert selector is not None
        pending: dict[int, bytes] = {}
        while True:
            with self._lock:
                added, self._added = self._added, []
                if self._closing and not added and len(selector.get_map()) == 1:
                    selector.close()
                    os.close(self._wake_r)
                    os.close(self._wake_w)
                    return
            for worker, stream in added:
                fd = stream.fileno()
                pending[fd] = b""
                selector.register(fd, selectors.EVENT_READ, (worker, stream))
            while self.inbox.undecoded > BACKLOG_BYTES and not self.unlimited:
                # The UI is that far behind: leave the pipes full, so the workers wait on their
                # next write instead of this process's memory growing without end.
                time.sleep(0.02)
            batch: list[Arrival] = []
            for key, _ in selector.select():
                if key.data is None:
                    os.read(self._wake_r, 4096)
                    continue
                worker, stream = key.data
                fd = key.fd
                chunk = os.read(fd, self.CHUNK)
                if not chunk:  # end of output: the process is gone or going
                    selector.unregister(fd)
                    rest = pending.pop(fd)
                    if rest.strip():
                        batch.append(WorkerOutput(worker.name, rest + b"\n"))
                    stream.close()
                    # Reaping can take a moment; this thread has other pipes to read meanwhile.
                    threading.Thread(target=self._finished, args=(worker,), daemon=True).start()
                    continue
                lines, pending[fd] = complete_lines(pending[fd], chunk, self.LONGEST_LINE)
                if not lines:
                    continue
                batch.append(WorkerOutput(worker.name, lines))
                if not worker.consuming.is_set() and b'"ready"' in lines:
                    self._look_for_ready(worker, lines)
            if batch:
                self.inbox.put_many(batch)
                # A short pause lets the pipes fill: one read then carries dozens of events, not
                # one (at prefetch 1 a worker writes per message), and this thread wakes, and
                # takes the GIL, a few hundred times a second instead of thousands.
                time.sleep(READ_PAUSE)

    @staticmethod
    def _look_for_ready(worker: WorkerProcess, lines: bytes) -> None:
        """Its first ``ready`` means its consumer is registered: the pool may start the next worker."""
        for line in lines.split(b"\n"):
            if b'"ready"' in line and type(protocol.decode(line)) is protocol.Ready:
                worker.consuming.set()
                return


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
        report: bool = False,
        queue_spec: QueueSpec | None = None,
        on_fail: FailMode = FailMode.REQUEUE,
    ) -> None:
        """``report``: the workers also report through the broker (``--report``), for watching dashboards.

        ``queue_spec``: how the workers declare the queue (without one, a classic queue, ``durable`` or not).
        """
        self._events = EventReader(inbox, self._finish)
        self.report = report
        self.inbox = inbox  # with this pool's masking of garbage lines
        self.url = url
        self.queue = queue
        self.mode = mode
        self.seconds_per_dot = seconds_per_dot
        self.queue_spec = QueueSpec(durable) if queue_spec is None else queue_spec
        self.durable = self.queue_spec.durable
        self.on_fail = FailMode(on_fail)
        self.heartbeat = heartbeat
        self.python = python
        self.processes: dict[str, WorkerProcess] = {}
        self._numbers = 0
        self._lock = threading.Lock()
        self._closed = False

    @property
    def inbox(self) -> Inbox:
        """Where events and process news go (replaceable before the first spawn)."""
        return self._events.inbox

    @inbox.setter
    def inbox(self, inbox: Inbox) -> None:
        inbox.garbage_text = self._masked
        self._events.inbox = inbox

    def next_name(self) -> str:
        self._numbers += 1
        return f"w{self._numbers}"

    def _argv(self, name: str) -> list[str]:
        argv = [
            self.python, "-u", "-m", "workers.worker", "--events", "--compact-events", "--wait-for-broker",
            "--name", name,
            "--queue", self.queue,
            "--prefetch", str(self.mode.prefetch),
            "--ack", self.mode.ack.value,
            "--seconds-per-dot", repr(self.seconds_per_dot),
        ]  # fmt: skip
        if self.heartbeat is not None:
            argv += ["--heartbeat", str(self.heartbeat)]
        if self.report:
            argv.append("--report")
        argv += self.queue_spec.argv()
        if not self.on_fail.requeues:
            argv += ["--on-fail", self.on_fail.value]
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
                # Ctrl+C in the dashboard's terminal is ours, not the workers': a session of its own
                # keeps a worker out of the terminal's process groups (and in a scheduling group of
                # its own, at the lowest priority: _yield_cpu_to_the_ui).
                start_new_session=True,
            )
            _yield_cpu_to_the_ui(process.pid)
            worker = WorkerProcess(name, process)
            self.inbox.put(obs.WorkerSpawned(name, time.time(), process.pid))
            assert process.stdout is not None and process.stderr is not None
            err = threading.Thread(target=self._read_stderr, args=(worker, process.stderr), daemon=True)
            worker.threads = [err]
            self.processes[name] = worker
        # stderr's reader first: the events reader joins it once stdout ends, which for a child
        # that dies at once can happen before the next line runs ("cannot join thread before
        # it is started", and WorkerExited is never reported).
        err.start()
        widen_pipe(process.stdout)
        self._events.add(worker, process.stdout)
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

    def _finish(self, worker: WorkerProcess) -> None:
        """Its output ended: report the exit once the process is reaped and its last stderr lines are in."""
        worker.consuming.set()  # it will never consume: nobody waits for it any longer
        code = worker.process.wait()  # reaped: no zombie, whatever the way it ended
        # Its three pipes are closed now: stdout by the reader, stderr by its thread, stdin here.
        # Left open, a dead worker's stdin and stderr were two descriptors kept for good, per kill.
        worker.close_stdin()
        for thread in worker.threads:
            thread.join(timeout=1.0)  # its last stderr lines belong before the exit
        self.inbox.put(obs.WorkerExited(worker.name, time.time(), code))
        worker.exit_reported.set()

    def _masked(self, line: bytes) -> str:
        """A line of worker output as text, with this pool's password masked."""
        return scrub(_as_text(line), self.url)

    def _read_stderr(self, worker: WorkerProcess, stream: IO[bytes]) -> None:
        """Its stderr lines as text into the inbox; the pipe is closed at its end (the text is kept, not the pipe)."""
        try:
            for line in stream:
                text = self._masked(line)
                if text:
                    self.inbox.put(obs.WorkerStderr(worker.name, time.time(), text[:300]))
        finally:
            stream.close()

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

    def set_fail_mode(self, on_fail: FailMode) -> list[str]:
        """Send the failure mode to every running worker; new workers start in it too."""
        self.on_fail = on_fail
        return [
            name
            for name, worker in list(self.processes.items())
            if worker.running and worker.send(protocol.SetFailMode(on_fail.value))
        ]

    def shutdown(self, timeout: float = 3.0) -> None:
        """Stop every worker: EOF on stdin first, SIGTERM, then SIGKILL for any straggler."""
        with self._lock:
            self._closed = True
            workers = list(self.processes.values())
        self._events.unlimited = True
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
        self._events.close()
