"""Provides the dashboard's broker link: queue figures, purge, and a publisher, each on its own thread.

The Textual app never talks pika; it starts these and receives plain values
through a listener. Every blocking call (AMQP, HTTP) happens here, off the UI
thread, and a lost broker is retried with backoff instead of raising.
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
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
from workers.new_task import FLUSH_EVERY, WINDOW, Outcome, Publisher

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


@dataclass(slots=True, eq=False)
class _Task:
    """One task the pane asked for, until the broker has settled it (or it is given up)."""

    body: str
    generation: int
    msg_id: str | None = None
    """Given at its first send, kept by every retry."""
    tries: int = 0
    """Sends that went out, or could not connect."""
    in_doubt: str = ""
    """Why an earlier send may have reached the broker unconfirmed: a resend may make a second copy."""
    probe: int = 0
    """Non-zero: sent again alone, to find which task of a channel the broker closed on it refused (that batch)."""


class PublisherThread:
    """Publishes batches of tasks with a window of confirms in flight on its own connection, reporting each one.

    Each task is announced (``task_published``) as it is first sent, and settled
    once: confirmed, or failed with the broker's reason (a return, a nack, a
    refusal). A task in flight when the connection went is in doubt: it is sent
    again under its id after a pause, and said to be a republish, up to
    ``ATTEMPTS`` tries. When the broker closes the channel (a refused message)
    with several tasks in flight, they are sent again one at a time: the one
    refused again was the one; those before it may have been queued, so each is
    said to be a republish once its confirm comes; those after it were dropped
    by the broker unread, and go out as first sends.

    While the broker blocks the connection (a memory or disk alarm) the sends
    wait as long as the alarm lasts, and say so: giving up would leave tasks the
    broker still delivers later, and sending them again would deliver them twice.
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
        window: int = WINDOW,
    ) -> None:
        self.listener = listener
        self.publisher = Publisher(
            url, queue_name, durable=durable, persistent=persistent, prefix=prefix,
            name="dispatch-lab publisher", blocked_timeout=None, window=window,
            on_blocked=lambda reason: listener.publisher_blocked(time.time(), reason),
            on_unblocked=lambda _lifted: listener.publisher_unblocked(time.time()),
        )  # fmt: skip
        self._jobs: queue.SimpleQueue[tuple[int, list[str]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._generation = 0
        """Bumped by ``cancel``: tasks asked for under an older generation and not sent yet are dropped."""
        self.pending = 0
        """Tasks asked for and not yet confirmed or failed (read by the UI for progress)."""
        self._todo: collections.deque[_Task] = collections.deque()
        """Tasks to send, in order; retries go back to the front."""
        self._sent: dict[str, _Task] = {}
        """Tasks in flight, by message id."""
        self._probes = itertools.count(1)
        self._stopping = False

    def start(self) -> None:
        self._thread.start()

    def submit(self, bodies: list[str]) -> None:
        self.pending += len(bodies)
        self._jobs.put((self._generation, bodies))

    def cancel(self) -> None:
        """Drop what is not yet published: the rest of the batch in progress and every batch behind it."""
        self._generation += 1

    def stop(self, timeout: float = 2.0) -> None:
        """Drop what is not yet published, wait for the confirms of what is, and end the thread.

        A wait on a blocked connection cannot be ended from here (pika is not
        thread-safe): the thread is a daemon and goes with the process, or ends once the broker unblocks.
        """
        self.cancel()
        self._jobs.put(None)
        self._thread.join(timeout)

    # ----- the publisher's thread

    def _run(self) -> None:
        try:
            while True:
                idle = not self._todo and not self._sent
                try:
                    item = self._jobs.get(timeout=self.KEEP_ALIVE) if idle else self._jobs.get_nowait()
                except queue.Empty:
                    if idle:
                        self.publisher.keep_alive()
                        self._settle()
                    else:
                        self._step()
                    continue
                if item is None:
                    self._stopping = True
                    self._drop_cancelled()
                    # What was sent gets its outcome (a retry under its id too); nothing new goes out.
                    while self._sent or any(t.msg_id is not None for t in self._todo):
                        self._step()
                    return
                generation, bodies = item
                self._todo.extend(_Task(body, generation) for body in bodies)
        finally:
            self.publisher.close()

    def _drop_cancelled(self) -> None:
        todo = self._todo
        while todo and todo[0].generation != self._generation and todo[0].msg_id is None:
            todo.popleft()
            self.pending -= 1
        if any(t.generation != self._generation and t.msg_id is None for t in todo):
            kept = [t for t in todo if t.generation == self._generation or t.msg_id is not None]
            self.pending -= len(todo) - len(kept)
            self._todo = collections.deque(kept)

    def _step(self) -> None:
        """Send what the window allows, then take in the broker's answers."""
        publisher, todo = self.publisher, self._todo
        if todo and todo[0].generation != self._generation:
            self._drop_cancelled()  # a task sent before (a retry) stays: its story must end
        sent = 0
        while todo and publisher.has_room() and not (self._stopping and todo[0].msg_id is None):
            task = todo[0]
            if task.msg_id is None and task.generation != self._generation:
                break  # cancelled meanwhile (a quit, a purge of the pane's batch): not one more goes out
            if task.probe and publisher.in_flight:
                break  # a probe goes out alone
            if not self._send(task):
                break
            todo.popleft()
            sent += 1
            if task.probe:
                break
            if sent % FLUSH_EVERY == 0:
                publisher.flush()
                self._settle()
        if publisher.in_flight:
            # With more to send and room for it: out with the buffer, in with the confirms, no waiting.
            if todo and publisher.has_room() and not todo[0].probe:
                publisher.flush()
            else:
                publisher.pump()
        self._settle()

    def _send(self, task: _Task) -> bool:
        """Send one task (its first try or a retry); False when no connection could be made (nothing sent)."""
        listener = self.listener
        try:
            self.publisher.ensure_open()
        except BrokerError as exc:
            task.tries += 1
            if exc.transient and task.tries < self.ATTEMPTS:
                time.sleep(BACKOFF[task.tries - 1])
                return False
            # No connection after the tries (or a mistake in the settings): the same goes for every task waiting.
            for waiting in list(self._todo):
                self._give_up(waiting, str(exc))
            self._todo.clear()
            return False
        if task.msg_id is None:
            task.msg_id = self.publisher.next_id()
            listener.task_published(time.time(), task.msg_id, task.body)
        elif task.in_doubt and not task.probe:
            # An earlier try may have reached the broker: this one can make a second copy. It keeps
            # the id, so the copies are one task in the ledger, and the ledger says it was sent twice.
            listener.task_republished(time.time(), task.msg_id, task.in_doubt)
        task.tries += 1
        self.publisher.send(task.body, task.msg_id)
        self._sent[task.msg_id] = task
        return True

    def _settle(self) -> None:
        retries: list[_Task] = []
        listener = self.listener
        for settled in self.publisher.take_settled():
            task = self._sent.pop(settled.msg_id)
            outcome = settled.outcome
            if outcome is Outcome.CONFIRMED:
                if task.probe:
                    listener.task_republished(time.time(), settled.msg_id, task.in_doubt)
                self.pending -= 1
                listener.task_confirmed(time.time(), settled.msg_id)
            elif outcome is Outcome.IN_DOUBT:
                task.in_doubt, task.probe = settled.reason, 0
                if task.tries >= self.ATTEMPTS:
                    self._give_up(task, settled.reason)
                else:
                    retries.append(task)
            elif outcome is Outcome.CHANNEL_CLOSED and settled.company > 1 and task.tries < self.ATTEMPTS:
                task.in_doubt = f"{settled.reason} It was one of {settled.company} tasks in flight."
                task.probe = -1  # numbered below, one batch for this closing
                retries.append(task)
            else:
                if outcome is Outcome.CHANNEL_CLOSED and task.probe:
                    # Refused alone: this was the one. Those behind it in its batch were never read.
                    for later in self._todo:
                        if later.probe == task.probe:
                            later.probe, later.in_doubt = 0, ""
                    task.in_doubt = ""
                self._give_up(task, settled.reason)
        if retries:
            batch = next(self._probes)
            for task in retries:
                if task.probe == -1:
                    task.probe = batch
            self._todo.extendleft(reversed(retries))
            if any(not t.probe for t in retries):
                time.sleep(BACKOFF[min(t.tries for t in retries) - 1])

    def _give_up(self, task: _Task, message: str) -> None:
        if task.in_doubt and message != task.in_doubt:
            message += " The task may still be delivered: an earlier try was sent, and never confirmed."
        self.pending -= 1
        if task.msg_id is None:
            task.msg_id = self.publisher.next_id()
            self.listener.task_published(time.time(), task.msg_id, task.body)
        self.listener.task_failed(time.time(), task.msg_id, message)
