"""Provides test helpers: worker subprocesses with an event reader, publishing, queue probes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pika

from workers import protocol, report
from workers.broker import QueueFigures, connect, probe_queue
from workers.new_task import Publisher
from workers.settings import URL_ENV

ROOT = Path(__file__).resolve().parent.parent
"""The repository root: subprocesses run there so ``-m workers.*`` imports this checkout."""

T = TypeVar("T")
E = TypeVar("E", bound=protocol.Event)

SPAWNED: list[subprocess.Popen[bytes]] = []
"""Every process the helpers started, so the session can prove none outlived it."""


def child_env(url: str, **extra: str) -> dict[str, str]:
    """The environment for a child: the broker URL travels here, never in argv (ps shows argv)."""
    env = dict(os.environ)
    env[URL_ENV] = url
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_until(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last value {value!r})")
        time.sleep(interval)


def of_kind(events: Iterable[protocol.Event], kind: type[E]) -> list[E]:
    """The events of one kind, in order."""
    found: list[E] = []
    for event in events:
        if isinstance(event, kind):
            found.append(event)
    return found


class WorkerProc:
    """A ``python -m workers.worker`` child with piped stdio and a thread reading its output.

    In events mode stdout lines are decoded with ``protocol.decode`` into ``events``;
    lines that do not decode are kept in ``bad_lines`` (a healthy worker has none).
    """

    def __init__(
        self,
        url: str,
        queue: str,
        name: str,
        *,
        prefetch: int = 1,
        ack: str = "manual",
        seconds_per_dot: float = 0.05,
        events: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.queue = queue
        args = [sys.executable, "-u", "-m", "workers.worker", "--queue", queue, "--name", name]
        args += ["--prefetch", str(prefetch), "--ack", ack, "--seconds-per-dot", str(seconds_per_dot)]
        if events:
            args.append("--events")
        args += list(extra_args)
        self.args = args
        self._cond = threading.Condition()
        self._events: list[protocol.Event] = []
        self._lines: list[str] = []
        self.bad_lines: list[str] = []
        self._stderr: list[str] = []
        self._events_mode = events
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=child_env(url),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        SPAWNED.append(self.proc)
        self._readers = [
            threading.Thread(target=self._read_stdout, name=f"{name}-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name=f"{name}-stderr", daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    # ----- reading

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            text = raw.decode("utf-8", "backslashreplace").rstrip("\n")
            events = protocol.decode_all(raw) if self._events_mode else None  # a ``tasks`` line holds several
            with self._cond:
                self._lines.append(text)
                if events is not None:
                    self._events += events
                elif self._events_mode:
                    self.bad_lines.append(text)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self._stderr.append(raw.decode("utf-8", "backslashreplace"))

    @property
    def events(self) -> list[protocol.Event]:
        with self._cond:
            return list(self._events)

    @property
    def lines(self) -> list[str]:
        """Every stdout line as text (the tutorial's output when not in events mode)."""
        with self._cond:
            return list(self._lines)

    @property
    def stderr(self) -> str:
        with self._cond:
            return "".join(self._stderr)

    def of(self, kind: type[E]) -> list[E]:
        """The events of one kind, in order."""
        return of_kind(self.events, kind)

    def describe(self) -> str:
        """What the worker said so far, for assertion messages."""
        events = "\n  ".join(protocol.encode(e).rstrip() for e in self.events[-40:])
        return (
            f"worker {self.name} (pid {self.proc.pid}, rc {self.proc.poll()}):\n"
            f"  {events}\n  bad lines: {self.bad_lines[-5:]}\n  stderr: {self.stderr[-1500:]!r}"
        )

    def wait_for(
        self, predicate: Callable[[list[protocol.Event]], T | None], timeout: float = 15.0, what: str = ""
    ) -> T:
        """Wait until ``predicate(events)`` is truthy and return its value; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(list(self._events))
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self.proc.poll() is not None and not self._readers[0].is_alive():
                    break  # nothing more will come
                self._cond.wait(min(remaining, 0.2))
        raise AssertionError(f"timed out waiting for {what or predicate!r}\n{self.describe()}")

    def wait_event(
        self, kind: type[E], count: int = 1, timeout: float = 15.0, where: Callable[[E], bool] | None = None
    ) -> list[E]:
        """Wait for at least ``count`` events of ``kind`` (matching ``where``); return them all."""

        def found(events: list[protocol.Event]) -> list[E] | None:
            hits = [e for e in of_kind(events, kind) if where is None or where(e)]
            return hits if len(hits) >= count else None

        return self.wait_for(found, timeout, f"{count} x {kind.__name__} from {self.name}")

    def wait_line(self, text: str, timeout: float = 15.0) -> None:
        """Wait for an exact stdout line (tutorial mode)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while text not in self._lines:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._readers[0].is_alive()):
                    raise AssertionError(f"no line {text!r} on stdout\n{self.lines}\n{self.describe()}")
                self._cond.wait(min(remaining, 0.2))

    def ready(self, timeout: float = 20.0) -> protocol.Ready:
        return self.wait_event(protocol.Ready, timeout=timeout)[0]

    # ----- controlling

    def send(self, command: protocol.Command | str) -> None:
        """Write one command line on the worker's stdin."""
        line = command if isinstance(command, str) else protocol.encode_command(command)
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() if line.endswith("\n") else (line + "\n").encode())
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def wait_exit(self, timeout: float = 15.0) -> int:
        """The exit code, once the process ended and its output was read to the end."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {self.name} did not exit within {timeout}s\n{self.describe()}") from None
        for reader in self._readers:
            reader.join(5.0)
        return code

    def kill(self) -> None:
        """SIGKILL (a crash: no goodbye to the broker) and reap."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.wait_exit(10.0)

    def interrupt(self) -> None:
        """SIGINT, as CTRL+C in a terminal."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)

    def stop(self, timeout: float = 15.0) -> int:
        """The graceful stop command (events mode); returns the exit code.

        EOF only follows the exit: EOF means "stop now" and would cut the current task short.
        """
        if self.proc.poll() is None:
            try:
                self.send(protocol.Stop())
            except (BrokenPipeError, OSError):
                pass
        code = self.wait_exit(timeout)
        self.close_stdin()
        return code

    def close(self) -> None:
        """Teardown: whatever state it is in, the process is gone and reaped afterwards."""
        self.close_stdin()
        if self.proc.poll() is None:
            try:
                self.proc.wait(0.5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10.0)
        for reader in self._readers:
            reader.join(2.0)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@dataclass(frozen=True)
class CliResult:
    """What a finished CLI run printed."""

    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_module(module: str, args: Sequence[str], url: str | None, timeout: float = 30.0) -> CliResult:
    """Run ``python -m <module> args`` to completion (the URL via AMQP_URL unless None)."""
    env = child_env(url) if url is not None else child_env("")
    if url is None:
        env.pop(URL_ENV)
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", module, *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    SPAWNED.append(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{module} {args} did not finish in {timeout}s: {out!r} {err!r}") from None
    return CliResult(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


# ----- broker side


def publish(url: str, queue: str, bodies: Iterable[str | bytes]) -> list[str]:
    """Publish persistent, confirmed tasks in order; returns their message ids."""
    with Publisher(url, queue, name="dispatch-lab tests") as publisher:
        return list(publisher.publish_many(bodies))


def publish_raw(url: str, queue: str, body: bytes, msg_id: str) -> None:
    """Publish one body with pika alone (no text handling on our side), confirmed."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue=queue, durable=True)
        channel.confirm_delivery()
        channel.basic_publish(
            exchange="",
            routing_key=queue,
            body=body,
            properties=pika.BasicProperties(message_id=msg_id, delivery_mode=2),
            mandatory=True,
        )
    finally:
        connection.close()


def figures(url: str, queue: str) -> QueueFigures | None:
    """Ready messages and consumers by passive declare on a fresh connection (None: no queue)."""
    connection = connect(url, name="dispatch-lab tests probe")
    try:
        return probe_queue(connection, queue)
    finally:
        connection.close()


def ready_count(url: str, queue: str) -> int:
    found = figures(url, queue)
    assert found is not None, f"queue {queue!r} does not exist"
    return found.ready


def wait_figures(
    url: str, queue: str, check: Callable[[QueueFigures], bool], timeout: float, what: str
) -> QueueFigures:
    """Poll the queue's figures until ``check`` holds."""

    def probe() -> QueueFigures | None:
        found = figures(url, queue)
        return found if found is not None and check(found) else None

    return wait_until(probe, timeout, f"{what} on {queue}", interval=0.1)


def delete_queue(url: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_delete(queue=queue)
    finally:
        connection.close()


def all_events(workers: Iterable[WorkerProc]) -> list[protocol.Event]:
    """Every worker's events, one list (each worker's own order kept)."""
    merged: list[protocol.Event] = []
    for worker in workers:
        merged += worker.events
    return merged


def wait_workers(
    workers: Sequence[WorkerProc],
    predicate: Callable[[list[protocol.Event]], T | None],
    timeout: float,
    what: str,
) -> T:
    """Wait until ``predicate`` holds over all the workers' events together."""
    try:
        return wait_until(lambda: predicate(all_events(workers)), timeout, what)
    except AssertionError as exc:
        details = "\n".join(w.describe() for w in workers)
        raise AssertionError(f"{exc}\n{details}") from None


def done_ids(events: Iterable[protocol.Event]) -> list[str | None]:
    return [e.msg_id for e in of_kind(events, protocol.Done)]


def held_series(events: Iterable[protocol.Event]) -> list[int]:
    """After each of one worker's events, how many deliveries it held (received, not done or returned)."""
    held_now = 0
    series: list[int] = []
    for event in events:
        if isinstance(event, protocol.Received):
            held_now += 1
        elif isinstance(event, (protocol.Done, protocol.Returned)):
            held_now -= 1
        series.append(held_now)
    return series


def max_held(events: Iterable[protocol.Event]) -> int:
    """The most deliveries one worker held at once."""
    return max(held_series(events), default=0)


@contextmanager
def heard_on_exchange(url: str, queue: str) -> Iterator[list[protocol.Event]]:
    """The events reporting workers on ``queue`` publish, as a dashboard's feed hears them (bound before yielding)."""
    heard: list[protocol.Event] = []
    feed = report.ReportFeed(url, queue, lambda *got: heard.extend(protocol.decode_lines(got[3])[0]))
    feed.start()
    try:
        assert feed.bound.wait(10), "the feed's queue was never bound"
        yield heard
    finally:
        feed.stop()
