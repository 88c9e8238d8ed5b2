"""Provides reporting through the broker: a worker's events on a topic exchange, and the dashboard's feed of them.

A worker started with ``--report`` hands each batch of event lines its
``EventWriter`` writes (one I/O cycle's worth) to a ``Reporter``, which
publishes them on ``dispatch-lab.events`` with the routing key
``<queue>.<worker name>``, from a thread and a connection of its own. The
work never waits for it: the buffer is bounded, and a batch that does not fit
is dropped and counted (a ``dropped`` event says how many so far). A
connection of its own, not only a channel: under a memory or disk alarm the
broker stops reading from every connection that publishes, and the worker's
acks would wait behind its reports.

A dashboard's ``ReportFeed`` binds an exclusive, auto-delete queue to
``<queue>.*`` and hands each message (worker name, host, the lines as sent)
to a callback on its thread.
"""

from __future__ import annotations

import collections
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from workers import protocol
from workers.broker import RECONNECT_DELAYS, BrokerError, Subscription, close_quietly, connect, declare_topic_exchange
from workers.settings import scrub

EXCHANGE = "dispatch-lab.events"
"""The topic exchange reporting workers publish their events on (not durable: telemetry, not work)."""
BUFFER_BYTES = 2 << 20
"""Event bytes a reporter holds at most while the broker takes them: beyond, batches are dropped, never waited for."""
INTERVAL = 0.1
"""Seconds between two publishes at least: a busy worker publishes ten batches a second, not one per I/O cycle.

Each publish wakes the reporting thread and costs a pika publish and a poll: at 0.05 s,
with a wake-up per batch offered on top, 50 workers on 2 cores spent 607 µs of CPU per
task with ``--report`` against 346 µs without (benchmarks: report_cpu_50)."""
HOST_HEADER = "host"
PID_HEADER = "pid"
CONTROL_HEADER = "control"
"""True when the worker obeys commands on ``workers.control.EXCHANGE`` (``--accept-control``); added later."""


def short_host() -> str:
    """This machine's name, as one word of a routing key (no dots)."""
    return (socket.gethostname().split(".")[0] or "host").replace("*", "-").replace("#", "-")


def default_name() -> str:
    """A reporting worker's name when none is given: unique per machine (host and pid)."""
    return f"{short_host()}-{os.getpid()}"


def routing_key(queue: str, name: str) -> str:
    return f"{queue}.{name}"


def check_name(name: str) -> str:
    """A name fit to report under: one word of a topic routing key; ValueError with a sentence otherwise."""
    if not name or "." in name or "*" in name or "#" in name:
        raise ValueError(f"a reporting worker's name is one word without '.', '*' or '#', not {name!r}")
    return name


def declare_exchange(channel: Any) -> None:
    declare_topic_exchange(channel, EXCHANGE)


class Reporter:
    """Publishes a worker's event batches on the events exchange, from its own thread; ``offer`` never blocks."""

    def __init__(
        self,
        url: str,
        queue: str,
        name: str,
        *,
        buffer_bytes: int = BUFFER_BYTES,
        host: str | None = None,
        control: bool = False,
    ) -> None:
        """``control``: the worker obeys commands on the control exchange, as each report's headers say."""
        self.url = url
        self.control = control
        self.name = name
        self.key = routing_key(queue, name)
        self.host = host or short_host()
        self.buffer_bytes = buffer_bytes
        self._lock = threading.Lock()
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_bytes = 0
        self._wake = threading.Event()
        """Set by ``offer`` only while the thread waits for something to send (``_idle``), and by ``close``."""
        self._idle = False
        self._closed = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.dropped = 0
        """Events dropped so far because the buffer was full (the broker slow or unreachable)."""
        self._dropped_sent = 0
        self.published = 0
        """Messages published so far (each a batch of lines)."""

    def offer(self, data: bytes) -> None:
        """Queue a batch of event lines (from any thread); dropped and counted when the buffer is full."""
        with self._lock:
            if self._pending_bytes + len(data) > self.buffer_bytes:
                self.dropped += protocol.events_in(data)
                return
            self._pending.append(data)
            self._pending_bytes += len(data)
            idle = self._idle
            self._idle = False
        if idle:  # a busy thread comes back for it on its own: no wake-up per batch
            self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="report", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Send what is pending (the ``stopped`` event most of all) within ``timeout``, then close."""
        self._closing = True
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.dropped:
            print(f"{self.name}: dropped {self.dropped} events the broker could not take in time", file=sys.stderr)

    def _take(self) -> bytes:
        with self._lock:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            dropped = self.dropped
        if dropped != self._dropped_sent:
            self._dropped_sent = dropped
            data += protocol.encode(protocol.Dropped(self.name, time.time(), dropped)).encode()
        return data

    def _run(self) -> None:
        attempt = 0
        while True:
            try:
                connection = connect(self.url, name=f"dispatch-lab {self.name} report (pid {os.getpid()})")
            except BrokerError as exc:
                if self._closing:
                    return
                if attempt == 0:
                    print(f"{self.name}: reporting paused: {exc}", file=sys.stderr, flush=True)
                self._pause(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
                attempt += 1
                continue
            attempt = 0
            try:
                if self._publish_until_closed(connection):
                    return
            except (pika.exceptions.AMQPError, OSError) as exc:
                print(f"{self.name}: reporting connection lost: {scrub(str(exc), self.url)}", file=sys.stderr)
            finally:
                close_quietly(connection)
            if self._closing:
                return

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._closing and time.monotonic() < deadline:
            time.sleep(0.05)

    def _publish_until_closed(self, connection: pika.BlockingConnection) -> bool:
        """Publish batches as they come; True once closing and everything pending went out."""
        channel = connection.channel()
        declare_exchange(channel)
        properties = pika.BasicProperties(
            content_type="application/x-ndjson",
            headers={HOST_HEADER: self.host, PID_HEADER: os.getpid(), CONTROL_HEADER: self.control},
            delivery_mode=1,
        )
        last = 0.0
        while True:
            self._wake.clear()
            with self._lock:
                self._idle = idle = not self._pending
            if idle and not self._closing:
                self._wake.wait(1.0)  # until a batch comes (or a second passed: heartbeats)
            closing = self._closing
            wait = INTERVAL - (time.monotonic() - last)
            if wait > 0 and not closing:
                self._closed.wait(wait)  # this thread's own pace; the worker's threads never wait for it
                closing = self._closing
            data = self._take()
            if data:
                channel.basic_publish(EXCHANGE, self.key, data, properties)  # runs pika's I/O loop as well
                self.published += 1
                last = time.monotonic()
            elif not closing:
                # Nothing to send for a second: heartbeats and the broker's frames. Not after every
                # publish: py-spy put a quarter of a busy reporting worker's samples in this call.
                connection.process_data_events(0)
            if closing:
                return True


class ReportFeed:
    """The dashboard's side: an exclusive queue bound to ``<queue>.*``; each report goes to ``heard`` on its thread.

    ``heard(name, host, pid, data, control)``: the worker's name (from the routing key), its host
    and pid (as it said), its event lines as sent, and whether it said it obeys commands.
    """

    def __init__(self, url: str, queue: str, heard: Callable[[str, str, int, bytes, bool], None]) -> None:
        self.url = url
        self.queue = queue
        self.heard = heard
        self._prefix = f"{queue}."
        self._subscription = Subscription(
            url,
            EXCHANGE,
            f"{queue}.*",
            self._on_message,
            connection_name="dispatch-lab monitor (reports)",
            thread_name="report-feed",
        )
        self.bound = self._subscription.bound
        """Set while the feed's queue is bound: reports published from then on reach it."""

    @property
    def native_id(self) -> int | None:
        """The feed thread's id for the OS, once it runs (a benchmark reads its CPU time)."""
        return self._subscription.native_id

    def start(self) -> None:
        self._subscription.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._subscription.stop(timeout)

    def _on_message(self, method: Any, properties: Any, body: bytes) -> None:
        key: str = method.routing_key
        if not key.startswith(self._prefix):
            return
        headers = properties.headers or {}
        host, pid = headers.get(HOST_HEADER), headers.get(PID_HEADER)
        name = key[len(self._prefix) :]
        control = headers.get(CONTROL_HEADER) is True
        self.heard(name, host if isinstance(host, str) else "", pid if isinstance(pid, int) else 0, body, control)
