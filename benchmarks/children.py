"""Provides the consumer processes a benchmark starts: ours (read as the dashboard reads) and the bare reference.

Every process started here is tracked until it has exited; ``stop_all`` ends
whatever is left (stdin EOF first, then SIGTERM, then SIGKILL), so a failed or
interrupted run leaves no ``-m workers`` process behind.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

from tui.engine.pool import PIPE_BYTES, READ_PAUSE, EventReader, Inbox, WorkerOutput, complete_lines, widen_pipe
from tui.model.observations import WorkerGarbage
from workers import protocol
from workers.settings import AckMode

ROOT = Path(__file__).resolve().parent.parent
Kind = Literal["ours", "compact", "bare"]
"""Our worker with v1 event lines (``--events``), with the compact form (``--compact-events``), or bare pika."""

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Stoppable(Protocol):
    """A process this module started: ``stop_all`` closes its stdin, then ends it."""

    def close_stdin(self) -> None: ...

    def end(self, timeout: float) -> None: ...


_live: set[Stoppable] = set()
_live_lock = threading.Lock()


class BenchError(Exception):
    """A run could not be measured; ``str()`` says why in one sentence."""


def _stat_cpu_seconds(path: str) -> float | None:
    """User + system CPU seconds from a /proc ``stat`` file, or None when it cannot be read."""
    try:
        with open(path, "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far, all its threads (Linux /proc), or None."""
    return _stat_cpu_seconds(f"/proc/{pid}/stat")


def thread_cpu_seconds(native_id: int) -> float | None:
    """User + system CPU seconds of one thread of this process (``threading.Thread.native_id``), or None."""
    return _stat_cpu_seconds(f"/proc/self/task/{native_id}/stat")


class Consumer:
    """One consumer process with piped stdio; a reader thread takes in its stdout as it comes."""

    def __init__(self, kind: Kind, queue: str, prefetch: int, env: Mapping[str, str]) -> None:
        self.kind = kind
        self.ready_at: float | None = None
        """time.monotonic() when the reader saw the ready line."""
        self.cpu_at_ready: float | None = None
        """The process's CPU seconds when it said ready: what came after is consuming."""
        self.reader_cpu = 0.0
        """CPU seconds our reader thread spent reading its output while it ran."""
        self.decode_cpu = 0.0
        """CPU seconds decoding all of its output, once it ended (ours only)."""
        self.acked = 0
        self.ack_times: list[float] = []
        """Epoch time of each ack (ours: of each ``done`` with ``acked``, written just before its ack)."""
        self.garbled = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self.finished = threading.Event()
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        if kind != "bare":
            args: Sequence[str] = (
                *("-m", "workers.worker", "--events", "--prefetch", str(prefetch)),
                *("--ack", AckMode.MANUAL.value, "--seconds-per-dot", "0", "--queue", queue),
                *(("--compact-events",) if kind == "compact" else ()),
            )
        else:
            args = ("-m", "benchmarks.bare_consumer", "--prefetch", str(prefetch), "--queue", queue)
        self.popen = subprocess.Popen(
            [sys.executable, "-u", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=dict(env),
        )
        with _live_lock:
            _live.add(self)
        if kind != "bare":
            assert self.popen.stdout is not None
            widen_pipe(self.popen.stdout)
        target = self._read_bare if kind == "bare" else self._read_events
        threading.Thread(target=target, name=f"read-{self.popen.pid}", daemon=True).start()
        threading.Thread(target=self._read_stderr, name=f"stderr-{self.popen.pid}", daemon=True).start()

    # ----- readers (one thread each)

    def _read_events(self) -> None:
        """Read the pipe as the dashboard's pool does, in chunks, undecoded; decode it all once it ends.

        The dashboard decodes on its UI thread, in slices between frames, not as lines
        arrive; decoding here during the run would load the cores this figure measures
        with the dashboard's work instead of the worker's. Its cost is still measured:
        ``decode_cpu``, taken after the run (and the dashboard's own figures include it).
        """
        assert self.popen.stdout is not None
        read = getattr(self.popen.stdout, "read1", self.popen.stdout.read)
        chunks: list[bytes] = []
        pending = b""
        # A v1 done line says "acked":true; a compact item ends with it (["d", ..., true], ["t", ..., true]).
        acked_mark = b",true]" if self.kind == "compact" else b'"acked":true'
        started = time.thread_time()
        while chunk := read(PIPE_BYTES):
            complete, pending = complete_lines(pending, chunk, EventReader.LONGEST_LINE)
            chunks.append(complete)
            # Progress while it runs (what Group.wait polls); the exact figures come from decoding.
            self.acked += complete.count(acked_mark)
            if self.ready_at is None and b'"ready"' in complete:
                self.ready_at = time.monotonic()
                self.cpu_at_ready = self.cpu_seconds()
            else:
                time.sleep(READ_PAUSE)  # as the pool's reader: let the pipe fill between reads
        self.reader_cpu = time.thread_time() - started
        started = time.thread_time()
        self._decode(b"".join(chunks) + pending)
        self.decode_cpu = time.thread_time() - started
        self.finished.set()

    def _decode(self, output: bytes) -> None:
        """Every line, decoded by the dashboard's own inbox: counts, ack times, lines that are no event."""
        inbox = Inbox()
        inbox.put(WorkerOutput("bench", output))
        acked = 0
        for event in inbox.drain():
            if isinstance(event, WorkerGarbage):
                self.garbled += 1
                continue
            assert isinstance(event, protocol.Event)
            self.counts[protocol.EVENT_NAMES[type(event)]] += 1
            if isinstance(event, protocol.Done) and event.acked:
                self.ack_times.append(event.ts)
                acked += 1
        self.acked = acked

    def _read_bare(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if line == "ready":
                self.ready_at = time.monotonic()
                self.cpu_at_ready = self.cpu_seconds()
            elif line.startswith("acked "):
                self.acked = int(line[6:])
            elif line.startswith("times "):
                self.ack_times.extend(float(t) for t in json.loads(line[6:]))
                self.acked = len(self.ack_times)
            elif line:
                self.garbled += 1
        self.finished.set()

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        for raw in self.popen.stderr:
            self._stderr.append(raw.decode("utf-8", "replace").rstrip())

    # ----- control

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of the process so far (Linux /proc), or None."""
        return cpu_seconds(self.popen.pid)

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def failure(self) -> str:
        """Why this process ended early, for an error message."""
        tail = " | ".join(line for line in self._stderr if line) or "no output on stderr"
        return f"{self.kind} consumer (pid {self.popen.pid}) exited with {self.popen.returncode}: {tail}"

    def close_stdin(self) -> None:
        """End-of-file on stdin: both kinds stop consuming and exit."""
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            try:
                self.popen.stdin.close()
            except OSError:
                pass

    def end(self, timeout: float) -> None:
        """Stop it: stdin EOF, then SIGTERM, then SIGKILL; reap it and its reader."""
        self.close_stdin()
        for escalate in (None, self.popen.terminate, self.popen.kill):
            if escalate is not None:
                escalate()
            try:
                self.popen.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        self.finished.wait(timeout)
        with _live_lock:
            _live.discard(self)


class Group:
    """Consumers of one kind started together on one queue."""

    def __init__(self, kind: Kind, count: int, queue: str, prefetch: int, env: Mapping[str, str]) -> None:
        self.kind = kind
        self.started_at = time.monotonic()
        self.members: list[Consumer] = []
        try:
            for _ in range(count):
                self.members.append(Consumer(kind, queue, prefetch, env))
        except BaseException:
            self.stop()
            raise

    def _check_alive(self) -> None:
        for member in self.members:
            if member.exited():
                raise BenchError(member.failure())

    def wait(self, condition: str, deadline: float, *, total: int = 0) -> None:
        """Poll until all are ready (``ready``) or ``total`` acks were seen (``acked``)."""
        while True:
            if condition == "ready":
                if all(m.ready_at is not None for m in self.members):
                    return
            elif sum(m.acked for m in self.members) >= total:
                return
            self._check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{self.kind} consumers: timed out waiting for {condition}")
            time.sleep(0.02)

    def consuming_cpu(self) -> float | None:
        """CPU seconds the processes spent since each said ready (call before stopping them)."""
        total = 0.0
        for member in self.members:
            now = member.cpu_seconds()
            if now is None or member.cpu_at_ready is None:
                return None
            total += now - member.cpu_at_ready
        return total

    def ready_after(self) -> float:
        """Seconds from the first launch to the last ready line."""
        return max(m.ready_at or 0.0 for m in self.members) - self.started_at

    def stop(self, timeout: float = 5.0) -> None:
        """Close every stdin first so they stop in parallel, then reap them."""
        for member in self.members:
            member.close_stdin()
        for member in self.members:
            member.end(timeout)


class Student:
    """One ``workers.worker`` as a student runs it in a class: its own name, default output, ``flags`` (``--report``).

    Its stdout (the tutorial's lines) goes to /dev/null on both sides of a comparison;
    its stderr to a file, read only to say why it ended early. Without ``--events`` it
    does not read stdin: SIGTERM stops it, as Ctrl+C would.
    """

    def __init__(
        self, name: str, queue: str, prefetch: int, env: Mapping[str, str], *, flags: Sequence[str], nice: int = 0
    ) -> None:
        """``flags``: none, ``--report`` or ``--report --accept-control``; ``nice``: run at this niceness.

        ``nice -n`` execs the worker: the pid stays its own.
        """
        self.name = name
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in end()
        args = (
            *("-m", "workers.worker", "--name", name, "--prefetch", str(prefetch)),
            *("--ack", AckMode.MANUAL.value, "--seconds-per-dot", "0", "--queue", queue),
            *flags,
        )
        self.popen = subprocess.Popen(
            [*(("nice", "-n", str(nice)) if nice else ()), sys.executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            cwd=ROOT,
            env=dict(env),
        )
        with _live_lock:
            _live.add(self)

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.popen.pid)

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def failure(self) -> str:
        """Why this process ended early, for an error message."""
        self._stderr.seek(0)
        lines = self._stderr.read()[-2000:].decode("utf-8", "replace").splitlines()
        tail = " | ".join(line for line in lines[-5:] if line) or "no output on stderr"
        return f"worker {self.name} (pid {self.popen.pid}) exited with {self.popen.returncode}: {tail}"

    def close_stdin(self) -> None:
        """It reads no stdin: ask it to stop as Ctrl+C would (all of a class at once, before any is waited for)."""
        if self.popen.poll() is None:
            try:
                self.popen.terminate()
            except OSError:
                pass

    def end(self, timeout: float) -> None:
        """Stop it: SIGTERM (the worker's clean stop), then SIGKILL; reap it."""
        for escalate in (self.popen.terminate, self.popen.kill):
            escalate()
            try:
                self.popen.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        self._stderr.close()
        with _live_lock:
            _live.discard(self)


class Class:
    """``count`` students' workers on one queue, named as if each ran on a lab machine of its own."""

    def __init__(
        self, count: int, queue: str, prefetch: int, env: Mapping[str, str], *, flags: Sequence[str], nice: int = 0
    ) -> None:
        self.members: list[Student] = []
        try:
            for n in range(1, count + 1):
                self.members.append(Student(f"lab-pc{n:02d}", queue, prefetch, env, flags=flags, nice=nice))
        except BaseException:
            self.stop()
            raise

    def check_alive(self) -> None:
        for member in self.members:
            if member.exited():
                raise BenchError(member.failure())

    def cpu_seconds(self) -> float:
        """CPU seconds of every member so far; BenchError when one cannot be read (it ended)."""
        total = 0.0
        for member in self.members:
            seconds = member.cpu_seconds()
            if seconds is None:
                raise BenchError(member.failure())
            total += seconds
        return total

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to all first so they stop in parallel, then reap each."""
        for member in self.members:
            member.close_stdin()
        for member in self.members:
            member.end(timeout)


def broker_pid(port: int = 5672) -> int | None:
    """The process listening on this machine's AMQP ``port`` (the broker's Erlang VM), or None when none is found.

    By the listening socket, not the VM's name: private test nodes of other engineers
    run beside the shared broker on this machine.
    """
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None


def stop_all() -> None:
    """End every process still alive that this module started (after an error or an interrupt)."""
    with _live_lock:
        left = list(_live)
    for child in left:
        child.close_stdin()
    for child in left:
        child.end(2.0)
