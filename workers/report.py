"""Provides reporting through the broker: a worker's events on a topic exchange, and the dashboard's feed of them.

A worker started with ``--report`` hands its event lines to a ``Reporter``,
which publishes them on ``dispatch-lab.events`` with the routing key
``<queue>.<worker name>``, on a connection of its own, from the worker's I/O
thread: a batch at most every INTERVAL, written to the socket as far as it
takes it at once. The work never waits for it: the buffer is bounded, and a
batch that does not fit is dropped and counted (a ``dropped`` event says how
many so far). A connection of its own, not only a channel: under a memory or
disk alarm the broker stops reading from every connection that publishes, and
the worker's acks would wait behind its reports.

A dashboard's ``ReportFeed`` binds an exclusive, auto-delete queue to
``<queue>.*`` and hands each message (worker name, host, the lines as sent)
to a callback on its thread.
"""

from __future__ import annotations

import collections
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from workers import protocol
from workers.broker import (
    RECONNECT_DELAYS,
    BrokerError,
    Subscription,
    close_quietly,
    connect,
    declare_topic_exchange,
    routing_key,
)
from workers.settings import scrub

EXCHANGE = "dispatch-lab.events"
"""The topic exchange reporting workers publish their events on (not durable: telemetry, not work)."""
BUFFER_BYTES = 2 << 20
"""Event bytes a reporter holds at most while the broker takes them: beyond, batches are dropped, never waited for."""
INTERVAL = 0.1
"""Seconds between two publishes at least: a busy worker publishes ten batches a second, not one per I/O cycle.

Each publish costs a pika publish and a socket write, and the events wait in the
worker's writer until then, encoded once a batch (benchmarks: report_cpu_50)."""
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


def check_name(name: str) -> str:
    """A name fit to report under: one word of a topic routing key; ValueError with a sentence otherwise."""
    if not name or "." in name or "*" in name or "#" in name:
        raise ValueError(f"a reporting worker's name is one word without '.', '*' or '#', not {name!r}")
    return name


def declare_exchange(channel: Any) -> None:
    declare_topic_exchange(channel, EXCHANGE)


class Reporter:
    """Publishes a worker's event batches on the events exchange: ``offer`` never blocks, ``pump`` never waits.

    The worker's connection thread calls ``pump`` once an I/O cycle. At most every
    INTERVAL it publishes what is pending on the reporting connection and writes it
    to the socket as far as the socket takes it at once; what the socket does not
    take stays with pika, and nothing more is published until it went out. A thread
    of its own only connects (again, after a loss) and closes: it sleeps while the
    connection works. When that thread also published, each of its wake-ups handed
    Python's interpreter lock back and forth with the worker's threads: with 50
    workers on 2 cores, 0.5 context switches a task (measured), which cost the
    workers more than the publishing did.
    """

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
        self._link: _Link | None = None
        """The connection while it works; only the thread that calls ``pump`` uses it then."""
        self._returned: _Link | None = None
        """A link handed back to the connecting thread: lost (to reconnect) or at close."""
        self._handed_back = threading.Event()
        self._stop = threading.Event()
        """Set by ``close`` (under the lock, as it takes the link): the connecting thread hands over no new link."""
        self._thread: threading.Thread | None = None
        self._next = 0.0
        """When ``pump`` publishes next at the earliest (monotonic)."""
        self._poll_at = 0.0
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

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="report", daemon=True)
        self._thread.start()

    def due(self) -> bool:
        """Whether the worker should hand over its pending events now: the next publish is due, or no link (buffer)."""
        return self._link is None or time.monotonic() >= self._next

    def pump(self) -> None:
        """Publish what is pending if INTERVAL passed since the last time; never waits (the worker's I/O thread)."""
        now = time.monotonic()
        if now < self._next:
            return
        link = self._link
        if link is None:
            return  # not connected (yet): the buffer keeps what it can
        self._next = now + INTERVAL
        try:
            if link.unsent():
                link.send()  # the broker is not reading (an alarm): nothing more until that went out
            elif self._pending and not link.blocked:
                link.publish(self.key, self._take())
                self.published += 1
            if now >= self._poll_at:
                self._poll_at = now + 1.0
                link.poll()  # heartbeats, connection.blocked, a channel the broker closed
        except (pika.exceptions.AMQPError, OSError) as exc:
            print(f"{self.name}: reporting connection lost: {scrub(str(exc), self.url)}", file=sys.stderr)
            self._hand_back(link)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is pending (the ``stopped`` event most of all) within ``timeout``, then close."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._stop.set()
            link, self._link = self._link, None
        if link is not None:
            try:
                data = self._take()
                if data and not link.blocked:
                    link.publish(self.key, data)
                    self.published += 1
                link.drain(deadline)
            except (pika.exceptions.AMQPError, OSError):
                pass
        self._hand_back(link)
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        if self.dropped:
            print(f"{self.name}: dropped {self.dropped} events the broker could not take in time", file=sys.stderr)

    def _hand_back(self, link: _Link | None) -> None:
        """Give the connection back to the connecting thread, to close it (and connect anew unless closing)."""
        with self._lock:
            self._link = None
            if link is not None:
                self._returned = link
        self._handed_back.set()

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
        """Connect, hand the connection over, sleep until it comes back; again after a loss, until closing."""
        attempt = 0
        while not self._stop.is_set():
            try:
                link: _Link | None = _Link.open(self.url, self.name, self.host, self.control)
            except (BrokerError, pika.exceptions.AMQPError, OSError) as exc:
                if self._stop.is_set():
                    return
                if attempt == 0:
                    why = exc if isinstance(exc, BrokerError) else scrub(str(exc), self.url)
                    print(f"{self.name}: reporting paused: {why}", file=sys.stderr, flush=True)
                self._stop.wait(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
                attempt += 1
                continue
            attempt = 0
            with self._lock:
                if not self._stop.is_set():
                    self._link, link = link, None
            if link is not None:  # closing meanwhile
                close_quietly(link.connection)
                return
            self._handed_back.wait()
            self._handed_back.clear()
            with self._lock:
                returned, self._returned = self._returned, None
            if returned is not None:
                close_quietly(returned.connection)
            self._stop.wait(RECONNECT_DELAYS[0])


class _Link:
    """The reporting connection and channel, with pika's writes made non-blocking.

    pika's BlockingChannel.basic_publish returns only once its output reached the
    socket, and process_data_events only once all output did: while an alarm keeps
    the broker from reading, either would hold the worker's thread. So the channel's
    publish only buffers the frames (pika's asynchronous channel) and the plain-TCP
    transport sends what the socket takes now; process_data_events (for heartbeats
    and the broker's notices) runs only with nothing left unsent and room in the
    socket. Another transport (TLS) is flushed by pika (not tested here: that flush
    waits while the socket is full).
    """

    def __init__(self, connection: pika.BlockingConnection, channel: Any, properties: pika.BasicProperties) -> None:
        self.connection = connection
        self.properties = properties
        self.blocked = False
        """The broker said connection.blocked (a memory or disk alarm): publish nothing until unblocked."""
        impl: Any = channel._impl
        self._publish: Callable[..., None] = impl.basic_publish
        transport: Any = getattr(impl.connection, "_transport", None)
        plain = type(transport).__name__ == "_AsyncPlaintextTransport"
        self._transport: Any = transport if plain and hasattr(transport, "_on_socket_writable") else None
        self._sock: socket.socket | None = getattr(transport, "_sock", None)
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        self._channel = channel

    @classmethod
    def open(cls, url: str, name: str, host: str, control: bool) -> _Link:
        connection = connect(url, name=f"dispatch-lab {name} report (pid {os.getpid()})")
        try:
            channel = connection.channel()
            declare_exchange(channel)
        except BaseException:
            close_quietly(connection)
            raise
        properties = pika.BasicProperties(
            content_type="application/x-ndjson",
            headers={HOST_HEADER: host, PID_HEADER: os.getpid(), CONTROL_HEADER: control},
            delivery_mode=1,
        )
        return cls(connection, channel, properties)

    def _on_blocked(self, *_: object) -> None:
        self.blocked = True

    def _on_unblocked(self, *_: object) -> None:
        self.blocked = False

    def unsent(self) -> int:
        """Bytes pika holds that the socket has not taken yet."""
        transport = self._transport
        return int(transport.get_write_buffer_size()) if transport is not None else 0

    def publish(self, key: str, data: bytes) -> None:
        self._publish(EXCHANGE, key, data, self.properties)
        self.send()

    def send(self) -> None:
        """Write what pika holds as far as the socket takes it now."""
        transport = self._transport
        if transport is None:
            self.connection.process_data_events(0)
        elif transport.get_write_buffer_size():
            transport._on_socket_writable()  # sends until the socket would block; a failure aborts the connection
            if transport._state != transport._STATE_ACTIVE:
                self.connection.process_data_events(0)  # raises the loss (pika's buffers are gone)

    def poll(self) -> None:
        """Heartbeats and the broker's notices, when pika could not wait on the socket; raises when the link is lost."""
        sock = self._sock
        if self.unsent() or (sock is not None and not select.select([], [sock], [], 0)[1]):
            return
        self.connection.process_data_events(0)
        if self._channel.is_closed:
            raise pika.exceptions.ChannelClosed(0, "the reporting channel was closed")

    def drain(self, deadline: float) -> None:
        """Send what pika holds until ``deadline`` at the latest (closing)."""
        sock = self._sock
        while self.unsent() and sock is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [sock], [], left)[1]:
                return
            self.send()


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
