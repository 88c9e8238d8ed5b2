"""Provides the dashboard's broker link: queue figures, purge, and a publisher, each on its own thread.

The Textual app never talks pika; it starts these and receives plain values
through a listener. Every blocking call (AMQP, HTTP) happens here, off the UI
thread, and a lost broker is retried with backoff instead of raising.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from typing import Protocol

import pika.exceptions

from workers.broker import (
    BrokerError,
    ConsumerInfo,
    ManagementApi,
    connect,
    explain_channel_error,
    server_cluster_name,
)
from workers.new_task import Publisher, TaskInDoubt

BACKOFF = (0.5, 1.0, 2.0, 3.0, 5.0)


class QueueListener(Protocol):
    """Receives what the queue monitor learns; called from its threads."""

    def queue_sampled(
        self,
        ts: float,
        ready: int,
        consumers: int,
        unacked: int | None,
        external: Sequence[ConsumerInfo] | None,
    ) -> None: ...

    def broker_status(self, ts: float, state: str, attempt: int, message: str) -> None: ...

    def queue_purged(self, ts: float, count: int) -> None: ...


class MonitorListener(QueueListener, Protocol):
    """Receives what the monitor and the publisher learn; called from their threads."""

    def task_published(self, ts: float, msg_id: str, body: str) -> None: ...

    def task_confirmed(self, ts: float, msg_id: str) -> None: ...

    def task_failed(self, ts: float, msg_id: str, message: str) -> None: ...

    def task_republished(self, ts: float, msg_id: str, reason: str) -> None: ...

    def publisher_blocked(self, ts: float, reason: str) -> None: ...

    def publisher_unblocked(self, ts: float) -> None: ...


def _sleep_unless(stop: threading.Event, seconds: float) -> bool:
    """Sleep; True when asked to stop meanwhile."""
    return stop.wait(seconds)


class QueueMonitor:
    """Samples the queue with passive declares a few times a second on its own connection."""

    def __init__(
        self,
        url: str,
        queue_name: str,
        listener: QueueListener,
        *,
        interval: float = 0.25,
        management: ManagementApi | None = None,
        management_interval: float = 2.0,
    ) -> None:
        self.url = url
        self.queue_name = queue_name
        self.listener = listener
        self.interval = interval
        self.management = management
        self.management_interval = management_interval
        self._stop = threading.Event()
        self._requests: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._mgmt: tuple[int | None, list[ConsumerInfo] | None] = (None, None)
        self._threads: list[threading.Thread] = []
        self._cluster: str | None = None
        """The cluster name the monitor's AMQP connection announced; None until it connects."""
        self._connected = threading.Event()

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run, name="monitor", daemon=True)]
        if self.management is not None:
            self._threads.append(threading.Thread(target=self._poll_management, name="mgmt", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def purge(self) -> None:
        """Ask for a purge of the queue's ready messages (reported via ``queue_purged``)."""
        self._requests.put("purge")

    def _poll_management(self) -> None:
        api = self.management
        assert api is not None
        # Nothing from the API is used before it is known to describe the broker the AMQP link reached.
        while not self._connected.wait(0.1):
            if self._stop.is_set():
                return
        while not self._stop.is_set():
            if not api.check_same_broker(self._cluster):
                self._mgmt = (None, None)
                if _sleep_unless(self._stop, self.management_interval):
                    return
                continue
            data = api.queue(self.queue_name)
            unacked = int(data.get("messages_unacknowledged") or 0) if data else None
            consumers = api.consumers(self.queue_name) if data else None
            self._mgmt = (unacked, consumers)
            if _sleep_unless(self._stop, self.management_interval):
                return

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                connection = connect(self.url, name="dispatch-lab monitor")
            except BrokerError as exc:
                attempt += 1
                self.listener.broker_status(time.time(), "reconnecting", attempt, str(exc))
                if _sleep_unless(self._stop, BACKOFF[min(attempt, len(BACKOFF)) - 1]):
                    return
                continue
            attempt = 0
            self._cluster = server_cluster_name(connection)
            self._connected.set()
            self.listener.broker_status(time.time(), "connected", 0, "")
            try:
                self._sample_until_stopped(connection)
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError, OSError) as exc:
                message = "the broker closed the connection" if str(exc) == "" else type(exc).__name__
                if isinstance(exc, pika.exceptions.ConnectionClosedByBroker):  # an operator's close_connection text
                    message = f"the broker closed the connection: {exc.reply_text}"
                self.listener.broker_status(time.time(), "lost", 0, message)
            finally:
                try:
                    if connection.is_open:
                        connection.close()
                except Exception:
                    pass

    def _sample_until_stopped(self, connection: pika.BlockingConnection) -> None:
        channel = connection.channel()
        while not self._stop.is_set():
            try:
                result = channel.queue_declare(queue=self.queue_name, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                # A passive declare of a missing queue closes the channel: report and reopen.
                self.listener.broker_status(time.time(), "connected", 0, explain_channel_error(exc, self.queue_name))
                channel = connection.channel()
                connection.sleep(1.0)
                continue
            unacked, consumers = self._mgmt
            self.listener.queue_sampled(
                time.time(),
                int(result.method.message_count),
                int(result.method.consumer_count),
                unacked,
                consumers,
            )
            self._serve_requests(channel)
            connection.sleep(self.interval)

    def _serve_requests(self, channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return
            if request == "purge":
                result = channel.queue_purge(self.queue_name)
                self.listener.queue_purged(time.time(), int(result.method.message_count))


class PublisherThread:
    """Publishes batches of tasks with confirms on its own connection, reporting each one.

    While the broker blocks the connection (a memory or disk alarm) a publish
    waits as long as the alarm lasts, and says so: giving up would leave a task
    the broker still delivers later, and sending it again would deliver it twice.
    """

    ATTEMPTS = 3
    KEEP_ALIVE = 1.0
    """Seconds between heartbeat checks of the idle connection."""

    def __init__(
        self,
        url: str,
        queue_name: str,
        listener: MonitorListener,
        *,
        prefix: str,
        durable: bool = True,
        persistent: bool = True,
    ) -> None:
        self.listener = listener
        self.publisher = Publisher(
            url, queue_name, durable=durable, persistent=persistent, prefix=prefix,
            name="dispatch-lab publisher", blocked_timeout=None,
            on_blocked=lambda reason: listener.publisher_blocked(time.time(), reason),
            on_unblocked=lambda _lifted: listener.publisher_unblocked(time.time()),
        )  # fmt: skip
        self._jobs: queue.SimpleQueue[tuple[int, list[str]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._generation = 0
        """Bumped by ``cancel``: batches asked for under an older generation are dropped."""
        self.pending = 0
        """Tasks asked for and not yet confirmed or failed (read by the UI for progress)."""

    def start(self) -> None:
        self._thread.start()

    def submit(self, bodies: list[str]) -> None:
        self.pending += len(bodies)
        self._jobs.put((self._generation, bodies))

    def cancel(self) -> None:
        """Drop what is not yet published: the rest of the batch in progress and every batch behind it."""
        self._generation += 1

    def stop(self, timeout: float = 2.0) -> None:
        """Drop what is not yet published and end the thread, which closes its connection.

        A publish waiting out a blocked connection cannot be ended from here (pika is not
        thread-safe): the thread is a daemon and goes with the process, or ends once the broker unblocks.
        """
        self.cancel()
        self._jobs.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while True:
                try:
                    item = self._jobs.get(timeout=self.KEEP_ALIVE)
                except queue.Empty:
                    self.publisher.keep_alive()
                    continue
                if item is None:
                    return
                # A flag cleared here would let the next queued batch run after a cancel.
                generation, job = item
                for index, body in enumerate(job):
                    if generation != self._generation:
                        self.pending -= len(job) - index
                        break
                    self._publish_one(body)
        finally:
            self.publisher.close()

    def _publish_one(self, body: str) -> None:
        listener = self.listener
        msg_id = self.publisher.next_id()
        listener.task_published(time.time(), msg_id, body)
        in_doubt = ""
        for attempt in range(1, self.ATTEMPTS + 1):
            try:
                self.publisher.ensure_open()
                if in_doubt:
                    # An earlier try may have reached the broker: this one can make a second copy. It keeps
                    # the id, so the copies are one task in the ledger, and the ledger says it was sent twice.
                    listener.task_republished(time.time(), msg_id, in_doubt)
                self.publisher.publish(body, msg_id)
            except TaskInDoubt as exc:
                message = in_doubt = str(exc)
                retry = True
            except BrokerError as exc:
                message, retry = str(exc), exc.transient
            else:
                self.pending -= 1
                listener.task_confirmed(time.time(), msg_id)
                return
            if not retry or attempt == self.ATTEMPTS:
                break
            time.sleep(BACKOFF[attempt - 1])
        if in_doubt and message != in_doubt:
            message += " The task may still be delivered: an earlier try was sent, and never confirmed."
        self.pending -= 1
        listener.task_failed(time.time(), msg_id, message)
