"""Provides the benchmark's own broker connections: the control connection and the queue monitor."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence

import pika
import pika.exceptions

from workers.broker import ConsumerInfo, ManagementApi, connect
from workers.monitor import QueueMonitor
from workers.new_task import _coalesce_writes
from workers.settings import url_parts

QUEUE_PREFIX = "dispatch-lab-bench-"
BENCH_QUEUE = re.compile(r"dispatch-lab-bench-(\d+)-[0-9a-f]{4}")
"""A benchmark run's queue: ``dispatch-lab-bench-<pid of the run>-<4 hex digits>``."""
LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")


def queue_name() -> str:
    """This run's queue: named after this process, so that a later run can tell it was left behind."""
    return f"{QUEUE_PREFIX}{os.getpid()}-{os.urandom(2).hex()}"


FILL_CHUNK = 1000
"""Tasks the fill buffers before it sends them."""
TASK_BODY = b"Hello World"
"""The tutorial's default task without its '!' (which fails a task since issue 15): no dots, zero seconds of work."""


class Control:
    """One connection (main thread only) that declares, fills, checks and deletes the bench queue."""

    def __init__(self, url: str, queue: str) -> None:
        self.url = url
        self.queue = queue
        self.connection = connect(url, name="dispatch-lab bench control")
        self.channel = self.connection.channel()
        self.channel.queue_declare(queue=queue, durable=True)
        self._batch = 0

    @property
    def broker_version(self) -> str:
        """``RabbitMQ 3.10.8`` from the server properties of the AMQP handshake."""
        props = self.connection._impl.server_properties or {}
        product = _text(props.get("product")) or "broker"
        return f"{product} {_text(props.get('version')) or '?'}"

    def figures(self) -> tuple[int, int]:
        """(ready messages, consumers) from a passive declare."""
        result = self.channel.queue_declare(queue=self.queue, passive=True)
        return int(result.method.message_count), int(result.method.consumer_count)

    def prepare(self, messages: int, timeout: float = 60.0) -> None:
        """An empty queue with no consumers, then ``messages`` persistent 0-dot tasks in it."""
        deadline = time.monotonic() + timeout
        while self.figures()[1] != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"queue {self.queue} still has consumers from an earlier run")
            self.connection.sleep(0.05)
        self.channel.queue_purge(queue=self.queue)
        self._batch += 1
        # On the channel under the BlockingChannel, as new_task's Publisher: BlockingChannel.basic_publish
        # sends each message on its own (16,000 a second; 150,000 took 9 s, 3 s this way).
        publish = self.channel._impl.basic_publish
        for i in range(messages):
            # Like new_task: persistent, with a message_id, but unconfirmed so filling is quick.
            props = pika.BasicProperties(
                delivery_mode=2, content_type="text/plain", message_id=f"bench-{self._batch}-{i}"
            )
            publish(exchange="", routing_key=self.queue, body=TASK_BODY, properties=props)
            if i % FILL_CHUNK == FILL_CHUNK - 1:
                self._send_buffered()
        self._send_buffered()
        while self.figures()[0] < messages:
            if time.monotonic() > deadline:
                raise TimeoutError(f"queue {self.queue} did not fill to {messages} messages")
            self.connection.sleep(0.05)
        # Let the broker finish writing the persistent batch before the clock starts.
        self.connection.sleep(0.3)

    def _send_buffered(self) -> None:
        """What the fill has buffered, joined into one chunk and sent (a turn of pika's loop)."""
        _coalesce_writes(self.connection)
        self.connection.process_data_events(0)

    def delete(self) -> None:
        self.channel.queue_delete(queue=self.queue)

    def sweep_orphans(self) -> list[str]:
        """Delete the queues of earlier runs on this machine that ended without deleting theirs; their names.

        A run killed outright (SIGKILL: a test's timeout, the OOM killer) cannot delete its
        queue, and a durable queue with its last backlog stays on the shared broker. Only
        queues named as a run's, whose process is gone from this machine, with no consumer
        (``if_unused``), are deleted; and only on a broker on this machine.
        """
        if url_parts(self.url).host not in LOOPBACK:
            return []
        names = ManagementApi(self.url).queue_names() or []
        swept = []
        for name in names:
            match = BENCH_QUEUE.fullmatch(name)
            if match is None or name == self.queue or os.path.exists(f"/proc/{match.group(1)}"):
                continue
            try:
                self.channel.queue_delete(queue=name, if_unused=True)
            except pika.exceptions.ChannelClosedByBroker:  # in use after all, or gone meanwhile
                self.channel = self.connection.channel()
                continue
            swept.append(name)
        return swept

    def close(self) -> None:
        try:
            if self.connection.is_open:
                self.connection.close()
        except Exception:
            pass


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value) if value is not None else ""


class Monitor:
    """The dashboard's own queue monitor (``workers.monitor.QueueMonitor``), ``hz`` samples a second.

    As the dashboard runs it: passive declares on one channel of its own connection,
    and the management API polled beside it when it answers. Until the fourth round
    this was a stand-in that opened and closed a channel for every probe: three
    round trips where the dashboard makes one.
    """

    def __init__(self, url: str, queue: str, hz: float) -> None:
        self.probes = 0
        self.error: str | None = None
        api = ManagementApi(url)
        self.management = api if api.queue(queue) is not None else None
        self._monitor = QueueMonitor(url, queue, self, interval=1.0 / hz, management=self.management)

    def __enter__(self) -> Monitor:
        self._monitor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._monitor.stop(timeout=5.0)

    # ----- the monitor's listener (called on its threads)

    def queue_sampled(
        self, ts: float, ready: int, consumers: int, unacked: int | None, external: Sequence[ConsumerInfo] | None
    ) -> None:
        self.probes += 1

    def broker_status(self, ts: float, state: str, attempt: int, message: str) -> None:
        if state != "connected" or message:
            self.error = f"{state}: {message}" if message else state

    def queue_purged(self, ts: float, count: int) -> None:
        """The benchmark purges nothing through the monitor."""
