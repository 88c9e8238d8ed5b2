"""Provides the worker: tutorial 2's worker.py with dispatch modes and a JSON event stream.

The connection's thread only takes deliveries off the socket (reporting
``received`` at once) and sends acks; the work happens on one FIFO work thread,
so heartbeats keep flowing during long tasks and the prefetch window is visible.
Zero-second tasks that arrive while the work thread is idle are done inline,
which spares the thread hop on the hot path without reordering anything.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, BinaryIO, TypeVar

import pika
import pika.exceptions
import pika.frame
import pika.spec

from workers import control, protocol, report
from workers.broker import BrokerError, close_quietly, connect, declare_task_queue, explain_channel_error
from workers.settings import (
    DEFAULT_QUEUE,
    AckMode,
    DispatchMode,
    FailMode,
    QueueSpec,
    SettingsError,
    add_connection_args,
    add_fail_arg,
    add_queue_args,
    check_ack,
    check_fail,
    check_prefetch,
    check_seconds_per_dot,
    queue_spec_or_exit,
    scrub,
    url_or_exit,
)

T = TypeVar("T")
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 3.0, 5.0)
BANG = b"!"
"""A task's body holding it fails when the work reaches it."""
_BANG = BANG[0]
"""As an int: ``33 in body`` is a memchr (16 ns), ``b"!" in body`` a substring search (160 ns, measured)."""
POLL_INTERVAL = 0.2
"""Longest the connection's loop waits before it looks at its flags (stop, drain, alive)."""
ACK_IDLE = 0.05
"""Seconds a finished task waits at most for its ack while deliveries keep coming (bare pika's flush too)."""


def ack_batch(prefetch: int) -> int:
    """Finished tasks acked together while deliveries keep coming: half the window (25 when unlimited).

    An ack per I/O cycle was 28 % of the connection thread at prefetch 50 (a cycle holds a
    few deliveries under load); half the window still leaves the broker room to send.
    """
    return max(1, prefetch // 2) if prefetch > 0 else 25


class EventWriter:
    """Collects event lines and writes each batch in one write, under one lock.

    Two threads writing at once would interleave bytes; one write per batch also
    keeps the cost per event low. With ``compact`` the received, started and done
    events go out as the items of ``tasks`` lines (protocol.encode_tasks), in order
    with the other events, which stay v1 lines.
    """

    def __init__(
        self,
        stream: BinaryIO | None,
        name: str = "worker",
        *,
        compact: bool = False,
        tee: Callable[[bytes], None] | None = None,
        due: Callable[[], bool] | None = None,
    ) -> None:
        """``due``: with a ``tee`` and no ``stream``, whether to hand the tee what is pending now (``--report`` alone).

        Until then lines and items wait here, so a busy reporting worker encodes one batch
        a report (every report.INTERVAL), not one a delivery: nothing reads them before the
        ack. ``emit`` always hands them over.
        """
        self._stream = stream
        self._tee = tee
        """Also gets every batch written (``--report``: workers.report.Reporter.offer, which never blocks)."""
        self._due = due if stream is None and tee is not None else None
        self._on = stream is not None or tee is not None
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._items: list[protocol.TaskItem] = []
        self.compact = compact
        self._name_json = json.dumps(name, ensure_ascii=False)

    @property
    def enabled(self) -> bool:
        return self._on

    def add(self, line: str) -> None:
        if self._on:
            with self._lock:
                if self._items:
                    self._close_items()  # what came before this line goes before it
                self._lines.append(line)

    def received(self, ts: float, tag: int, msg_id: str | None, body: str, redelivered: bool) -> None:
        if self.compact:
            self._add_item(protocol.item_received(ts, tag, msg_id, body, redelivered))
        else:
            self.add(protocol.encode_received(self._name_json, ts, tag, msg_id, body, redelivered))

    def received_counted(
        self, ts: float, tag: int, msg_id: str | None, body: str, redelivered: bool, count: int
    ) -> None:
        """``received`` with the broker's delivery count (quorum queues)."""
        if self.compact:
            self._add_item(protocol.item_received_counted(ts, tag, msg_id, body, redelivered, count))
        else:
            self.add(protocol.encode_received_counted(self._name_json, ts, tag, msg_id, body, redelivered, count))

    def started(self, ts: float, tag: int, msg_id: str | None, seconds: float) -> None:
        if self.compact:
            self._add_item(protocol.item_started(ts, tag, msg_id, seconds))
        else:
            self.add(protocol.encode_started(self._name_json, ts, tag, msg_id, seconds))

    def done(self, ts: float, tag: int, msg_id: str | None, acked: bool) -> None:
        if self.compact:
            self._add_item(protocol.item_done(ts, tag, msg_id, acked))
        else:
            self.add(protocol.encode_done(self._name_json, ts, tag, msg_id, acked))

    def worked(self, ts: float, tag: int, msg_id: str | None, body: str, redelivered: bool, acked: bool) -> None:
        """A task received, started and done at once: the three events."""
        if self.compact:
            # _add_item, inlined: at prefetch 50 this runs per delivery.
            if self._on:
                item = protocol.item_worked(ts, tag, msg_id, body, redelivered, acked)
                with self._lock:
                    items = self._items
                    items.append(item)
                    if len(items) >= protocol.TASKS_CAP:
                        self._close_items()
        else:
            self.add(protocol.encode_inline_task(self._name_json, ts, tag, msg_id, body, redelivered, acked))

    def _add_item(self, item: protocol.TaskItem) -> None:
        if not self._on:
            return
        with self._lock:
            items = self._items
            items.append(item)
            if len(items) >= protocol.TASKS_CAP:
                self._close_items()

    def _close_items(self) -> None:
        """Turn the items so far into one line, after the lines before them; the caller holds the lock."""
        self._lines.append(protocol.encode_tasks(self._name_json, self._items))
        self._items = []

    def emit(self, event: protocol.Event) -> None:
        """Add an event and write everything pending."""
        self.add(protocol.encode(event))
        self.flush(force=True)

    def worked_now(self, ts: float, tag: int, msg_id: str | None, body: str, redelivered: bool, acked: bool) -> None:
        """``worked``, then write everything pending in one write (before the ack it precedes)."""
        if not self._on:
            return
        if self._due is not None:  # only reports: they go out with the next batch, after the ack or not
            self.worked(ts, tag, msg_id, body, redelivered, acked)
            return
        # One lock, not two: at prefetch 1 this is the worker's cost per message.
        if self.compact:
            item = protocol.item_worked(ts, tag, msg_id, body, redelivered, acked)
            with self._lock:
                self._items.append(item)
                self._write_pending()
        else:
            line = protocol.encode_inline_task(self._name_json, ts, tag, msg_id, body, redelivered, acked)
            with self._lock:
                self._lines.append(line)  # no items wait in this form
                self._write_pending()

    def flush(self, *, force: bool = False) -> None:
        """Write everything pending; with only a tee, when it is ``due`` (or ``force``)."""
        if not self._on or not (self._lines or self._items):  # nothing pending: no lock (once a cycle)
            return
        due = self._due
        if due is not None and not force and not due():
            return
        with self._lock:
            self._write_pending()

    def _write_pending(self) -> None:
        """Everything added so far, in one write; the caller holds the lock."""
        if self._items:
            self._close_items()
        if not self._lines or not self._on:
            return
        data = "".join(self._lines).encode("utf-8", "backslashreplace")
        self._lines.clear()
        if self._tee is not None:
            self._tee(data)
        if self._stream is None:
            return
        try:
            self._stream.write(data)
            self._stream.flush()
        except (BrokenPipeError, ValueError):
            # The reader went away; stdin EOF will stop us shortly.
            self._stream = None
            self._on = self._tee is not None


@dataclass(slots=True)
class Task:
    """A delivery the worker holds: waiting, in progress, or done and awaiting its ack."""

    gen: int
    tag: int
    msg_id: str | None
    text: str
    seconds: float
    ack: AckMode
    lost: str = ""
    """Set when the broker took this delivery back while it was worked on: its finish is an ack_lost."""
    fails: bool = False
    """Its body holds ``!``: the work fails when the worker reaches it."""
    fail: FailMode | None = None
    """Set when it failed and the worker tells the broker so: nack with requeue, or reject."""


Finished = tuple[int, str | None, FailMode | None]
"""A task finished and not yet acked: its delivery tag, its message id, and how it failed (None: it did not).

A tuple, not a Task: at prefetch 50 one is made per delivery (a Task took 0.24 µs, a tuple 0.02).
"""


@dataclass(frozen=True, slots=True)
class ConsumerCancelled:
    """The broker cancelled our consumer (basic.cancel): noted on the connection's thread, handled after the cycle."""

    channel: Any
    consumer_tag: str


@dataclass(frozen=True, slots=True)
class ChannelTakenAway:
    """The broker closed our channel (an ack timeout, most often), with its code and text."""

    channel: Any
    code: int
    text: str


@dataclass(frozen=True, slots=True)
class Resume:
    """The task the broker took back is finished: consume again on the new channel."""


@dataclass(frozen=True, slots=True)
class Crash:
    """A task failed under ``--on-fail crash``: exit once the acks of the tasks finished before it are out."""

    text: str


Notice = ConsumerCancelled | ChannelTakenAway | Resume | Crash
"""What the broker did, queued among the commands: pika's callbacks only note it (nothing per message)."""


def lost_reason(exc: BaseException) -> str:
    """Why a connection was lost as the broker said it (an operator's close_connection text); "" when it said nothing.

    A reset socket or a missed heartbeat has no words from the broker: the event then claims none.
    """
    if isinstance(exc, pika.exceptions.ConnectionClosedByBroker):
        return str(exc.reply_text)
    return ""


def shown(text: str) -> str:
    """The body quoted as the tutorial prints it (%r), without doubling our own byte escapes."""
    return repr(text) if "\\" not in text else f"'{text}'"


def body_text(body: bytes) -> str:
    """The body as text for events and the terminal; bytes that are not UTF-8 shown escaped."""
    if len(body) <= protocol.BODY_CAP:  # most bodies: one decode, half the time of the general case
        text = body.decode("utf-8", "backslashreplace")
        if len(text) <= protocol.BODY_CAP:  # escapes can make it longer than the bytes were
            return text
    head = body[: protocol.BODY_CAP * 4]
    text = head.decode("utf-8", "backslashreplace")
    if len(text) > protocol.BODY_CAP or len(head) < len(body):
        text = text[: protocol.BODY_CAP - 1] + "…"
    return text


class Worker:
    """One consumer process; ``run`` returns the exit code."""

    _mode: DispatchMode
    _policy: tuple[bool, bool, bool]
    """Of the mode: prefetch 1, the worker acks after the work, every task is acked (``mode``'s setter)."""

    def __init__(
        self,
        url: str,
        *,
        queue_name: str = DEFAULT_QUEUE,
        name: str = "worker",
        mode: DispatchMode | None = None,
        seconds_per_dot: float = 1.0,
        events: BinaryIO | None = None,
        commands: BinaryIO | None = None,
        heartbeat: int | None = None,
        durable: bool = True,
        wait_for_broker: bool = False,
        compact: bool = False,
        report: report.Reporter | None = None,
        on_fail: FailMode = FailMode.REQUEUE,
        queue_spec: QueueSpec | None = None,
    ) -> None:
        """``report``: also gets every batch of event lines (``--report``), and a ``pump`` each I/O cycle to send them.

        ``queue_spec`` says how the queue is declared; without one, a classic queue (``durable`` or not).
        """
        self.url = url
        self.queue_name = queue_name
        self.name = name
        self.mode = mode or DispatchMode()
        self.on_fail = FailMode(on_fail)
        self.queue_spec = QueueSpec(durable=durable) if queue_spec is None else queue_spec
        self.seconds_per_dot = seconds_per_dot
        self.heartbeat = heartbeat
        self.durable = self.queue_spec.durable
        self.wait_for_broker = wait_for_broker
        self.writer = EventWriter(
            events,
            name,
            compact=compact,
            tee=None if report is None else report.offer,
            due=None if report is None else report.due,
        )
        self._reporter = report
        """Its ``pump`` runs on the connection's thread once a cycle: it publishes from there, never waiting."""
        self.tutorial = events is None
        self._commands_in = commands

        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._waiting: collections.deque[Task] = collections.deque()
        self._current: Task | None = None
        self._gen = 0
        self._interrupt = threading.Event()
        self._finished: collections.deque[Finished] = collections.deque()
        """Finished tasks awaiting their ack, in tag order, all of the current channel: the connection
        thread takes out what is here right after it moves the generation on (under the lock); the work
        thread adds a task only if, under the lock, the task's generation is still the current one."""
        self._wake_pending = False
        self._deliveries = 0
        """Deliveries taken so far: a cycle that adds none finds the connection idle, and acks."""
        self._ack_due = False
        self._ack_timer = False
        self._commands: queue.SimpleQueue[protocol.Command | Notice] = queue.SimpleQueue()
        self._never_acked: set[int] = set()

        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._consumer_tag: str | None = None
        self._draining = False
        self._stop_reason: str | None = None
        self._exit = False
        self._alive_at = 0.0

    @property
    def mode(self) -> DispatchMode:
        return self._mode

    @mode.setter
    def mode(self, mode: DispatchMode) -> None:
        self._mode = mode
        ack = mode.ack
        # Read once per delivery: an AckMode property costs about 0.1 µs a look, three looks a delivery.
        self._policy = (mode.prefetch == 1, ack.worker_acks_after_work, ack.acked)

    # ----- output

    def _say(self, text: str) -> None:
        """A line in the tutorial's words: stdout in a terminal, stderr beside events."""
        if self.tutorial:
            print(text, flush=True)

    def _fail(self, message: str) -> None:
        message = scrub(message, self.url)
        if self.writer.enabled:
            self.writer.emit(protocol.Error(self.name, time.time(), message))
        print(f"{self.name}: {message}", file=sys.stderr, flush=True)

    # ----- the connection's thread

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._deliveries += 1
        if _BANG in body or properties.headers:
            # A task that fails, or a quorum queue's delivery count: off the hot path, as its own case.
            self._on_special_message(method, properties, body)
            return
        tag = method.delivery_tag
        msg_id = properties.message_id
        text = body_text(body)
        seconds = body.count(b".") * self.seconds_per_dot
        prefetch_one, after_work, acked = self._policy
        now = time.time()
        writer = self.writer
        events = writer._on
        if seconds == 0 and after_work and prefetch_one and events and not self._finished:
            # Prefetch 1: the broker sends nothing more until this ack, so the time from here to
            # the ack is the throughput. Done line first (done before ack), then the ack, at once.
            with self._lock:
                idle = self._current is None and not self._waiting
            if idle and not self._never_acked:
                if self.tutorial:  # --report in a terminal: the tutorial's lines as well
                    self._say(f" [x] Received {shown(text)}")
                    self._say(" [x] Done")
                writer.worked_now(now, tag, msg_id, text, method.redelivered, True)
                send_ack(channel, tag, multiple=False)
                return
        if not acked:
            self._never_acked.add(tag)
        with self._lock:
            if seconds != 0 or self._current is not None or self._waiting:
                # Work to wait for, or work ahead of it: the work thread's, in order. (Only a
                # task that goes there needs a Task: at prefetch 50 most are done right here.)
                if events:  # before the work thread can see the task, so received precedes started
                    writer.received(now, tag, msg_id, text, method.redelivered)
                self._waiting.append(Task(self._gen, tag, msg_id, text, seconds, self._mode.ack))
                self._work_ready.notify()
                return
        # Idle and nothing to do: work here, in order, without the thread hop.
        if self.tutorial:
            self._say(f" [x] Received {shown(text)}")
            self._say(" [x] Done")
        if events:
            writer.worked(now, tag, msg_id, text, method.redelivered, acked)
        if after_work:
            self._finished.append((tag, msg_id, None))

    def _on_special_message(self, method: Any, properties: Any, body: bytes) -> None:
        """A delivery that fails when worked (its body holds '!'), or carries x-delivery-count: to the work thread.

        The dots before the '!' are worked first. Never done inline: the failure (and its
        nack or reject) belongs to the work thread, in order with the tasks around it.
        """
        tag = method.delivery_tag
        msg_id = properties.message_id
        text = body_text(body)
        fail_at = body.find(BANG)
        fails = fail_at >= 0
        seconds = (body.count(b".", 0, fail_at) if fails else body.count(b".")) * self.seconds_per_dot
        headers = properties.headers
        count = _delivery_count(headers) if headers else None
        ack = self.mode.ack
        task = Task(self._gen, tag, msg_id, text, seconds, ack, fails=fails)
        if not ack.acked:
            self._never_acked.add(tag)
        writer = self.writer
        with self._lock:
            if writer.enabled:  # before the work thread can see the task, so received precedes started
                if count is None:
                    writer.received(time.time(), tag, msg_id, text, method.redelivered)
                else:
                    writer.received_counted(time.time(), tag, msg_id, text, method.redelivered, count)
            self._waiting.append(task)
            self._work_ready.notify()

    def _wake(self) -> None:
        """Runs on the connection's thread after the work thread asked for it."""

    def _request_wake(self) -> None:
        connection = self._connection
        with self._lock:
            if self._wake_pending or connection is None:
                return
            self._wake_pending = True
        try:
            connection.add_callback_threadsafe(self._wake)
        except Exception:
            # The connection is closing; the loop notices on its own.
            pass

    def _after_cycle(self, idle: bool = True) -> None:
        """Write what happened, then ack it (done before ack), then obey commands.

        While deliveries keep coming (``idle`` False) the ack waits until half the window
        is finished or ACK_IDLE has passed; a cycle that brought no delivery acks at once.
        """
        if self._wake_pending:  # only set under the lock; clearing it needs the lock, reading it does not
            with self._lock:
                self._wake_pending = False
        self.writer.flush()
        commands = self._commands
        finished = self._finished
        if finished:
            if idle or self._ack_due or len(finished) >= ack_batch(self.mode.prefetch) or not commands.empty():
                self._ack_due = False
                self._send_acks()
            elif not self._ack_timer and self._connection is not None:
                self._ack_timer = True
                self._connection.call_later(ACK_IDLE, self._ack_deadline)
        while not commands.empty():  # cheaper than raising queue.Empty once per cycle
            try:
                command = commands.get_nowait()
            except queue.Empty:
                break
            self._obey(command)
        if self._reporter is not None:
            self._reporter.pump()

    def _ack_deadline(self) -> None:
        """ACK_IDLE after a finished task was left unacked: ack at the end of this cycle, whatever it brought."""
        self._ack_timer = False
        self._ack_due = True

    def _send_acks(self) -> None:
        finished = self._finished
        if not finished:
            return
        if self._channel is not None and self._channel.is_closed:
            return  # closed by the broker: the notice later in this cycle reports these as ack_lost
        # A task is queued here only after its done line was added to the writer, but the
        # work thread may have queued it after this cycle's flush: write those dones first.
        count = len(finished)
        self.writer.flush()
        last = 0
        channel = self._channel
        if channel is None:  # the channel went, and the broker requeued these with it
            for _ in range(count):
                finished.popleft()
            return
        never_acked = self._never_acked
        for _ in range(count):
            tag, _msg_id, fail = finished.popleft()
            if fail is not None:
                # A failed task among finished ones: ack those before it first (a multiple ack would take it too).
                if last:
                    channel.basic_ack(last, multiple=True)
                    last = 0
                _tell_failure(channel, tag, fail)
            elif never_acked:
                channel.basic_ack(tag, multiple=False)
            else:
                last = tag
        if last:
            # One FIFO work line: every tag up to the last finished one is finished.
            send_ack(channel, last, multiple=True)

    def _obey(self, command: protocol.Command | Notice) -> None:
        if isinstance(command, ConsumerCancelled):
            self._on_cancelled(command)
        elif isinstance(command, ChannelTakenAway):
            self._on_channel_taken(command)
        elif isinstance(command, Resume):
            if self._channel is not None and self._consumer_tag is None and not self._draining:
                self._consume()
                self._announce_ready()
        elif isinstance(command, Crash):
            self._crash(command.text)
        elif isinstance(command, protocol.SetFailMode):
            self._set_fail_mode(command.on_fail)
        elif isinstance(command, protocol.SetMode):
            mode = self._checked_mode(command)
            if mode is not None:
                self._change_mode(mode)
        elif command.now:
            self._stop_reason = "stop"
            self._exit = True
        else:
            self._begin_drain("stop")

    def _checked_mode(self, command: protocol.SetMode) -> DispatchMode | None:
        """The mode a command asks for; None, after saying why, when it asks for one that does not exist."""
        try:
            return DispatchMode(check_prefetch(command.prefetch), check_ack(command.ack))
        except SettingsError as exc:
            self._fail(str(exc))
            return None

    def _set_fail_mode(self, name: str) -> None:
        try:
            self.on_fail = check_fail(name)
        except SettingsError as exc:
            self._fail(str(exc))
            return
        self.writer.emit(protocol.OnFail(self.name, time.time(), self.on_fail.value))
        self._say(f" [~] on failure: {self.on_fail.words}")

    def _crash(self, text: str) -> None:
        """Exit as an uncaught exception in the task would: no goodbye, the broker requeues what we held.

        os._exit, not an exception: a daemon thread blocked reading stdin makes interpreter
        shutdown abort (see main); the socket closes with the process either way.
        """
        self.writer.flush(force=True)
        if self._reporter is not None:
            self._reporter.close(0.5)  # what led here, for a dashboard that hears it through the broker
        print(
            f"{self.name}: Traceback (most recent call last): task {shown(text)} failed; "
            "--on-fail crash: the worker exits with the task unacknowledged (exit code 1)",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)

    def _give_back(self, tasks: list[Task], reason: str, *, nack: bool) -> None:
        """Report held deliveries as returned, and requeue them if the channel lives."""
        now = time.time()
        for task in tasks:
            if task.ack.broker_acks_on_delivery:
                continue  # the broker forgot it at delivery: nothing to give back
            self._never_acked.discard(task.tag)
            if nack and self._channel is not None:
                self._channel.basic_nack(task.tag, multiple=False, requeue=True)
            self.writer.add(protocol.encode(protocol.Returned(self.name, now, task.tag, task.msg_id, reason)))

    def _take_waiting(self, *, keep_auto: bool) -> list[Task]:
        """Remove waiting tasks from the work line (auto-acked ones stay if asked)."""
        with self._lock:
            taken = [t for t in self._waiting if not (keep_auto and t.ack.broker_acks_on_delivery)]
            kept = [t for t in self._waiting if keep_auto and t.ack.broker_acks_on_delivery]
            self._waiting.clear()
            self._waiting.extend(kept)
        return taken

    def _change_mode(self, mode: DispatchMode) -> None:
        """cancel -> qos -> consume, between messages; basic_qos alone would not reach the consumer."""
        channel = self._channel
        if channel is None:
            self.mode = mode
            return
        if self._consumer_tag is not None:
            pending = channel.basic_cancel(self._consumer_tag)
            # pika nacks a manual consumer's undispatched deliveries itself; an
            # auto-ack consumer's come back here, already forgotten by the broker.
            for method, properties, body in pending or ():
                self._on_message(channel, method, properties, body)
            self._consumer_tag = None
        self._give_back(self._take_waiting(keep_auto=True), "mode-change", nack=True)
        self.mode = mode
        channel.basic_qos(prefetch_count=mode.prefetch)
        if not self._draining:
            self._consume()
        self.writer.emit(protocol.Mode(self.name, time.time(), mode.prefetch, mode.ack))

    def _consume(self) -> None:
        self._consumer_tag = self._channel.basic_consume(
            queue=self.queue_name,
            on_message_callback=self._on_message,
            auto_ack=self.mode.ack.broker_acks_on_delivery,
        )

    # ----- when the broker steps in

    def _new_channel(self, *, consume: bool = True) -> None:
        """A channel that reports what the broker does to it, the queue declared, consuming (if asked)."""
        assert self._connection is not None
        channel = self._connection.channel()
        channel.add_on_cancel_callback(
            lambda frame: self._commands.put(ConsumerCancelled(channel, frame.method.consumer_tag))
        )

        def closed(_impl: object, reason: BaseException) -> None:
            if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
                self._commands.put(ChannelTakenAway(channel, reason.reply_code, str(reason.reply_text)))

        # BlockingChannel has no close callback of its own; the channel it wraps has, with the broker's reason.
        channel._impl.add_on_close_callback(closed)
        declare_task_queue(channel, self.queue_name, spec=self.queue_spec)
        channel.basic_qos(prefetch_count=self.mode.prefetch)
        self._channel = channel
        if consume:
            self._consume()

    def _on_cancelled(self, notice: ConsumerCancelled) -> None:
        """The queue went (deleted): say so, declare it again and consume from it.

        What the worker holds stays unacked on its channel (the broker keeps the
        tags; measured on 3.10: acks of them are accepted, even after the queue is
        declared again, and touch nothing in the new queue): it works them as usual.
        """
        if notice.channel is not self._channel or notice.consumer_tag != self._consumer_tag:
            return  # an older channel's, or a consumer we cancelled ourselves
        self._consumer_tag = None
        reason = "unknown" if self._queue_exists() else "queue-deleted"
        self.writer.emit(protocol.Cancelled(self.name, time.time(), reason))
        self._say(f" [!] consumer cancelled by the broker ({reason.replace('-', ' ')})")
        if self._draining:
            return
        declare_task_queue(self._channel, self.queue_name, spec=self.queue_spec)
        self._consume()
        self._say(" [*] queue declared again; waiting for messages")
        self._announce_ready()

    def _queue_exists(self) -> bool:
        """A passive declare on a channel of its own (a missing queue closes the channel that asks)."""
        assert self._connection is not None
        probe = self._connection.channel()
        try:
            probe.queue_declare(queue=self.queue_name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            return bool(exc.reply_code != 404)
        probe.close()
        return True

    def _on_channel_taken(self, notice: ChannelTakenAway) -> None:
        """The broker closed the channel and requeued what it had delivered on it: report, then a new channel.

        The task in progress is finished all the same (the work is under way); its
        finish is an ``ack_lost``, as is every task done but not yet acked.
        Auto-acked tasks were the worker's from delivery: they stay. The new channel
        consumes once that task is finished: a delivery taken meanwhile would wait
        behind it with its own ack timeout running (measured: a lone worker then
        timed out on its own redeliveries for good), and the broker can hand the
        message to a free consumer instead.
        """
        if notice.channel is not self._channel:
            return
        reason = protocol.taken_back_reason(notice.code, notice.text)
        now = time.time()
        self.writer.add(protocol.encode(protocol.ChannelClosed(self.name, now, notice.code, notice.text)))
        self._say(f" [!] the broker closed the channel: {notice.text}")
        with self._lock:
            self._gen += 1
            kept = [t for t in self._waiting if t.ack.broker_acks_on_delivery]
            given = [t for t in self._waiting if not t.ack.broker_acks_on_delivery]
            for task in kept:
                task.gen = self._gen
            self._waiting = collections.deque(kept)
            current = self._current
            if current is not None and current.ack.broker_acks_on_delivery:
                current.gen = self._gen
            elif current is not None and not current.lost:
                current.lost = reason
                given.insert(0, current)
            finishing = current is not None and bool(current.lost)
        unsent = list(self._finished)
        self._finished.clear()
        self._give_back(given, reason, nack=False)
        for tag, msg_id, _fail in unsent:
            self.writer.add(protocol.encode(protocol.AckLost(self.name, now, tag, msg_id, reason)))
        self._never_acked.clear()
        self._channel = self._consumer_tag = None
        if not self._draining:
            self._new_channel(consume=not finishing)
            if not finishing:
                self._announce_ready()
        self.writer.flush()

    def _begin_drain(self, reason: str) -> None:
        """Stop taking deliveries, give back the waiting ones, finish the current task."""
        if self._draining:
            return
        self._draining = True
        self._stop_reason = reason
        if self._channel is not None and self._consumer_tag is not None:
            for method, properties, body in self._channel.basic_cancel(self._consumer_tag) or ():
                self._on_message(self._channel, method, properties, body)
            self._consumer_tag = None
        self._give_back(self._take_waiting(keep_auto=True), "stop", nack=True)
        self.writer.flush()

    def _idle(self) -> bool:
        with self._lock:
            return self._current is None and not self._waiting

    def _abandon(self, reason: str, *, nack: bool) -> None:
        """Give back everything held, cutting the task in progress short.

        After a lost connection, auto-acked tasks are kept: the broker already
        forgot them, so finishing them is the only way they get done.
        """
        keep_auto = reason == "connection-lost"
        with self._lock:
            held = list(self._waiting)
            if self._current is not None:
                held.insert(0, self._current)
            given = [t for t in held if not (keep_auto and t.ack.broker_acks_on_delivery)]
            self._gen += 1
            kept = [t for t in held if t not in given]
            for task in kept:
                task.gen = self._gen
            self._waiting = collections.deque(t for t in kept if t is not self._current)
            if self._current is not None and self._current in given:
                self._interrupt.set()
            # Taken back by the broker already (and reported so): cut short now, it is neither returned nor worked.
            taken = [t for t in given if t.lost]
            for task in taken:
                task.lost = ""
            self._work_ready.notify()
        self._give_back([t for t in given if t not in taken], reason, nack=nack)
        finished = list(self._finished)
        self._finished.clear()
        self._never_acked.clear()
        self.writer.flush()
        if reason == "stop":
            # Done and reported but not yet acked (a CTRL+C or EOF right after a task): the
            # channel still lives, so ack them now, or a clean stop redelivers finished work.
            self._ack_quietly(finished)

    def _ack_quietly(self, tasks: list[Finished]) -> None:
        channel = self._channel
        if channel is None:
            return
        try:
            for tag, _msg_id, fail in tasks:
                if fail is not None:
                    _tell_failure(channel, tag, fail)
                else:
                    channel.basic_ack(tag, multiple=False)
        except Exception:
            pass  # the channel broke meanwhile: the broker requeues them, as after a crash

    # ----- the work thread

    def _work(self) -> None:
        writer = self.writer
        while True:
            with self._lock:
                while not self._waiting and not self._exit:
                    self._work_ready.wait()
                if self._exit and not self._waiting:
                    return
                task = self._waiting.popleft()
                self._current = task
                self._interrupt.clear()
            self._say(f" [x] Received {shown(task.text)}")
            if writer.enabled:
                writer.started(time.time(), task.tag, task.msg_id, task.seconds)
                if task.seconds > 0:
                    writer.flush()
            if task.seconds > 0:
                self._interrupt.wait(task.seconds)
            action = ""
            with self._lock:
                if task.gen != self._gen:
                    if not task.lost or self._current is not task:
                        continue  # given back while we worked on it
                    # The broker took it back while we worked: the work is done, no ack can reach it.
                    self._current = None
                    lost = protocol.AckLost(self.name, time.time(), task.tag, task.msg_id, task.lost)
                    writer.add(protocol.encode(lost))
                    writer.flush()
                    self._say(" [x] Done, but the broker had taken it back: no ack")
                    self._commands.put(Resume())  # the connection's loop looks within POLL_INTERVAL
                    continue
                self._current = None
                if task.fails:
                    action = self._failure(task)
                elif writer.enabled:
                    writer.done(time.time(), task.tag, task.msg_id, task.ack.acked)
                if task.fails and task.fail is None:
                    pass  # crash, or nothing to tell the broker
                elif task.ack.worker_acks_after_work:
                    self._finished.append((task.tag, task.msg_id, task.fail))
            if task.fails:
                self._say(f" [!] Failed {shown(task.text)}: {action}")
            else:
                self._say(" [x] Done")
            # Written before the ack is even requested: a kill in between shows as a
            # redelivery and a second done, never as a finished task that vanished.
            writer.flush()
            if task.fails and action == "crash":
                self._commands.put(Crash(task.text))  # after the acks of the tasks finished before it
                self._request_wake()
                return  # no more work: the process is about to exit
            self._request_wake()

    def _failure(self, task: Task) -> str:
        """Note a failed task (its ``failed`` event, what to tell the broker); the caller holds the lock.

        Returns the action: the failure mode's word, or ``none`` when the worker does not
        ack at all (auto ack: the broker forgot the task at delivery; no ack: it stays unacked).
        """
        on_fail = self.on_fail
        if on_fail.exits:
            action = "crash"
        elif task.ack.worker_acks_after_work:
            action = on_fail.value
            task.fail = on_fail
        else:
            action = "none"
        if self.writer.enabled:
            self.writer.add(protocol.encode(protocol.Failed(self.name, time.time(), task.tag, task.msg_id, action)))
        return action

    # ----- life cycle

    def _read_commands(self) -> None:
        assert self._commands_in is not None
        for line in self._commands_in:
            command = protocol.decode_command(line)
            if command is None:
                if line.strip():
                    print(
                        f"{self.name}: ignored a line on stdin that is not a command",
                        file=sys.stderr,
                        flush=True,
                    )
                continue
            self.command(command)
        self.command(protocol.Stop(now=True))

    def command(self, command: protocol.Command) -> None:
        """Obey a command between messages, as a line on stdin is obeyed (from any thread; never blocks)."""
        self._commands.put(command)
        self._request_wake()

    def _open(self) -> None:
        connection = connect(self.url, name=f"dispatch-lab {self.name} (pid {os.getpid()})", heartbeat=self.heartbeat)
        self._connection = connection
        self._ack_timer = False  # a lost connection's deadline timer never fires
        try:
            self._new_channel()
        except BaseException:
            self._connection = self._channel = self._consumer_tag = None
            close_quietly(connection)
            raise
        _keep_ticking(connection)

    def _reconnect(self) -> bool:
        """Reconnect with backoff after the connection was lost; False when told to stop."""
        attempt = 0
        while not self._exit:
            attempt += 1
            self.writer.emit(protocol.Connection(self.name, time.time(), "reconnecting", attempt))
            delay = RECONNECT_DELAYS[min(attempt - 1, len(RECONNECT_DELAYS) - 1)]
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not self._exit:
                self._poll_commands_offline()
                # Alive without a broker: a worker waiting out a broker restart was shown UNRESPONSIVE.
                self._say_alive()
                self.writer.flush()
                if self._reporter is not None:
                    self._reporter.pump()
                time.sleep(0.05)
            if self._exit:
                return False
            try:
                self._open()
            except BrokerError as exc:
                if attempt == 1 or attempt % 10 == 0:
                    print(f"{self.name}: {exc}", file=sys.stderr, flush=True)
                continue
            self.writer.emit(protocol.Connection(self.name, time.time(), "restored", attempt))
            self._announce_ready()
            return True
        return False

    def _poll_commands_offline(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, (ConsumerCancelled, ChannelTakenAway, Resume)):
                continue  # about the connection that was lost (a new one consumes at once)
            if isinstance(command, Crash):
                self._crash(command.text)
            elif isinstance(command, protocol.SetFailMode):
                self._set_fail_mode(command.on_fail)
            elif isinstance(command, protocol.SetMode):
                mode = self._checked_mode(command)
                if mode is not None:
                    self.mode = mode
                    self.writer.emit(protocol.Mode(self.name, time.time(), mode.prefetch, mode.ack))
            else:
                self._exit = True
                self._stop_reason = "stop"

    def _announce_ready(self) -> None:
        self.writer.emit(
            protocol.Ready(
                self.name,
                time.time(),
                os.getpid(),
                self.queue_name,
                self.mode.prefetch,
                self.mode.ack,
                self.on_fail.value,
            )
        )

    def _say_alive(self) -> None:
        now = time.time()
        if now - self._alive_at < 1.0 or not self.writer.enabled:
            return
        self._alive_at = now
        # pika keeps the value negotiated in Connection.Tune on the parameters it connected with
        # (none while the connection is lost: heartbeat 0, no broker to drop us).
        params = getattr(getattr(self._connection, "_impl", None), "params", None)
        heartbeat = int(getattr(params, "heartbeat", 0) or 0)
        # With its mode: a dashboard that started after this worker's ``ready`` learns it here.
        mode = self.mode
        alive = protocol.Alive(self.name, now, heartbeat, mode.prefetch, mode.ack, self.on_fail.value)
        self.writer.add(protocol.encode(alive))

    def _loop(self) -> None:
        while not self._exit:
            if self._draining and self._idle():
                self._after_cycle()
                self._exit = True
                break
            try:
                assert self._connection is not None
                # No time_limit: it would set and cancel a timer on every call (per
                # delivery at prefetch 1); _keep_ticking's timer bounds the wait instead.
                deliveries = self._deliveries
                self._connection.process_data_events(time_limit=None)
                self._say_alive()
                self._after_cycle(idle=self._deliveries == deliveries)
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise BrokerError(explain_channel_error(exc, self.queue_name)) from None
            except (
                pika.exceptions.AMQPConnectionError,
                pika.exceptions.ConnectionWrongStateError,
                pika.exceptions.ChannelWrongStateError,
                pika.exceptions.StreamLostError,
            ) as exc:
                reason = scrub(lost_reason(exc), self.url)
                self.writer.emit(protocol.Connection(self.name, time.time(), "lost", 0, reason))
                self._say(f" [!] connection lost: {reason}" if reason else " [!] connection lost")
                self._abandon("connection-lost", nack=False)
                self._connection = self._channel = self._consumer_tag = None
                if not self._reconnect():
                    return

    def run(self) -> int:
        """Consume until stopped; 0 on a clean stop, 1 on a broker error."""
        previous = previous_int = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            previous_int = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            opened = True
            try:
                self._open()
            except BrokerError as exc:
                self._fail(str(exc))
                # Asked to wait (the dashboard starts workers during a broker restart too):
                # keep trying, as after a lost connection, until told to stop.
                if not (self.wait_for_broker and exc.transient):
                    self._emit_stopped("error")
                    return 1
                opened = False
            worker_thread = threading.Thread(target=self._work, name="work", daemon=True)
            worker_thread.start()
            if self._commands_in is not None:
                threading.Thread(target=self._read_commands, name="stdin", daemon=True).start()
            if opened:
                self._announce_ready()
            elif not self._reconnect():
                self._shutdown(worker_thread, self._stop_reason or "stop")
                return 0
            self._say(" [*] Waiting for messages. To exit press CTRL+C")
            try:
                self._loop()
            except BrokerError as exc:
                self._fail(str(exc))
                self._shutdown(worker_thread, "error")
                return 1
            except KeyboardInterrupt:
                self._stop_reason = "interrupted"
            self._shutdown(worker_thread, self._stop_reason or "stop")
            return 0
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if previous_int is not None:
                signal.signal(signal.SIGINT, previous_int)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        # Only flags: the loop wakes within its poll interval and shuts down cleanly.
        self._stop_reason = "terminated"
        self._exit = True

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        """CTRL+C: a flag, as for SIGTERM, so the cycle in progress (its acks) completes first.

        A KeyboardInterrupt raised between taking a finished task off the ack queue and
        acking it made a clean stop redeliver a task the terminal had shown as done. A
        second CTRL+C interrupts at once.
        """
        self._stop_reason = "interrupted"
        self._exit = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _shutdown(self, worker_thread: threading.Thread, reason: str) -> None:
        """Give back whatever is still held, close the connection, say stopped."""
        try:
            self._abandon("stop", nack=False)  # closing the channel requeues them
        except Exception:
            pass
        with self._lock:
            self._exit = True
            self._work_ready.notify()
        worker_thread.join(timeout=1.0)
        if self._connection is not None:
            close_quietly(self._connection)
        self._emit_stopped(reason)

    def _emit_stopped(self, reason: str) -> None:
        if self.writer.enabled:
            self.writer.emit(protocol.Stopped(self.name, time.time(), reason))


def _delivery_count(headers: dict[str, Any]) -> int | None:
    """The ``x-delivery-count`` header of a quorum queue's delivery, or None (classic queues send none)."""
    count = headers.get("x-delivery-count")
    # pika gives a 64-bit field as its own int subclass (compat.long), so not ``type(...) is int``.
    return int(count) if isinstance(count, int) and not isinstance(count, bool) else None


def send_ack(channel: Any, tag: int, *, multiple: bool) -> None:
    """``channel.basic_ack``, sent on the socket at once when nothing else waits to be sent.

    pika's BlockingChannel.basic_ack buffers the frame, turns on the socket's
    writability watcher (epoll_ctl), polls until the socket is writable (epoll_wait),
    sends, and turns the watcher off again (epoll_ctl): four syscalls and a turn of
    pika's I/O loop for a 21-byte frame. At prefetch 1 that is the worker's cost per
    task beside bare pika's (strace -c: 7 socket syscalls a task in both, 4 with this,
    beside our one write of the event line).
    The frame is built, counted and checked as pika does (an open connection and
    channel); what the socket does not take at once, or any socket error, goes to
    pika's own buffer, which sends it or reports the error on the next turn of the
    loop. Only on the plain-TCP transport (TLS has its own framing); if pika no longer
    has these parts, its own basic_ack is used (tests/test_worker.py fails then, to say so).
    """
    impl: Any = getattr(channel, "_impl", None)
    connection: Any = getattr(impl, "connection", None)
    transport: Any = getattr(connection, "_transport", None)
    buffers = getattr(transport, "_tx_buffers", None)
    sock = getattr(transport, "_sock", None)
    if (
        buffers is None
        or buffers  # something is already waiting: the ack goes after it, through pika
        or sock is None
        or type(transport).__name__ != "_AsyncPlaintextTransport"
        or not impl.is_open
        or connection.is_closed
    ):
        channel.basic_ack(tag, multiple=multiple)
        return
    data = pika.frame.Method(impl.channel_number, pika.spec.Basic.Ack(tag, multiple)).marshal()
    connection.bytes_sent += len(data)
    connection.frames_sent += 1
    try:
        sent = sock.send(data)
    except OSError:  # would block, or the socket failed: pika sends it, or reports the failure, as usual
        sent = 0
    if sent < len(data):
        transport.write(data[sent:])


def _tell_failure(channel: Any, tag: int, fail: FailMode) -> None:
    """nack with requeue, or reject without: what the failure mode says, for a failed task."""
    if fail.requeues:
        channel.basic_nack(tag, multiple=False, requeue=True)
    else:
        channel.basic_reject(tag, requeue=False)


def _keep_ticking(connection: pika.BlockingConnection) -> None:
    """Make process_data_events return at least every POLL_INTERVAL on this connection."""

    def tick() -> None:
        if connection.is_open:
            connection.call_later(POLL_INTERVAL, tick)

    connection.call_later(POLL_INTERVAL, tick)


def _checked(convert: Callable[[str], T], check: Callable[[T], T], what: str) -> Callable[[str], T]:
    """An argparse type: convert, then check the range; a SettingsError's sentence is the message."""

    def parse(text: str) -> T:
        try:
            return check(convert(text))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                str(exc) if isinstance(exc, SettingsError) else f"not {what}: {text!r}"
            ) from None

    return parse


positive_float = _checked(float, check_seconds_per_dot, "a number")
prefetch_arg = _checked(int, check_prefetch, "a whole number")


def ack_arg(text: str) -> AckMode:
    try:
        return check_ack(text)
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(prog: str = "worker") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Consume tasks: each dot in a task is seconds-per-dot of work."
    )
    add_connection_args(parser)
    parser.add_argument(
        "--prefetch",
        type=prefetch_arg,
        default=1,
        help="0 = unlimited (round-robin), 1 = fair dispatch (default), N",
    )
    parser.add_argument(
        "--ack",
        type=ack_arg,
        default=AckMode.MANUAL,
        help="manual (after the work; default), auto (on delivery), none (never)",
    )
    parser.add_argument("--seconds-per-dot", type=positive_float, default=1.0, metavar="F")
    parser.add_argument("--name", default=None, help="worker name (default: w<pid>)")
    parser.add_argument(
        "--events",
        action="store_true",
        help="JSON event lines on stdout, commands on stdin (for the dashboard)",
    )
    parser.add_argument(
        "--compact-events",
        action="store_true",
        help="with --events: received/started/done as batched 'tasks' lines (the dashboard reads them faster)",
    )
    parser.add_argument(
        "--heartbeat",
        type=int,
        default=None,
        metavar="S",
        help="ask the broker for this heartbeat timeout in seconds",
    )
    parser.add_argument(
        "--wait-for-broker",
        action="store_true",
        help="if the broker cannot be reached at start, keep trying instead of exiting",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help=f"also send the events to the broker's {report.EXCHANGE} exchange, for a dashboard anywhere "
        "(name defaults to host-pid)",
    )
    parser.add_argument(
        "--accept-control",
        action="store_true",
        help=f"with --report: obey stop and mode changes a dashboard sends on the {control.EXCHANGE} exchange "
        "(anyone who may publish on the broker's vhost can send them)",
    )
    add_queue_args(parser)
    add_fail_arg(parser)
    return parser


def main(argv: list[str] | None = None, prog: str = "worker") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    spec = queue_spec_or_exit(parser, args)
    url = url_or_exit(args.url, prog)
    events: BinaryIO | None = sys.stdout.buffer if args.events else None
    # The stdin thread gets its own reader: a daemon thread blocked in sys.stdin.buffer holds
    # that object's lock, and interpreter shutdown then aborts ("could not acquire lock for
    # <stdin> at interpreter shutdown", SIGABRT) whenever we exit while stdin is still open.
    commands: BinaryIO | None = None
    if args.events:
        commands = open(sys.stdin.fileno(), "rb", closefd=False)  # noqa: SIM115 - lives as long as we do
    if args.accept_control and not args.report:
        # A dashboard learns that a worker takes commands from its reports; unseen, it would never send one.
        print(
            f"{prog}: --accept-control needs --report: a dashboard sends commands only to workers it hears "
            "report that they accept them",
            file=sys.stderr,
        )
        return 2
    name = args.name or (report.default_name() if args.report else f"w{os.getpid()}")
    reporter: report.Reporter | None = None
    if args.report:
        try:
            report.check_name(name)
        except ValueError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 2
        reporter = report.Reporter(url, args.queue, name, control=args.accept_control)
        reporter.start()
    worker = Worker(
        url,
        queue_name=args.queue,
        name=name,
        mode=DispatchMode(args.prefetch, args.ack),
        seconds_per_dot=args.seconds_per_dot,
        events=events,
        commands=commands,
        heartbeat=args.heartbeat,
        wait_for_broker=args.wait_for_broker,
        # Nobody reads the lines on stdout then: the compact form costs the reporter least.
        compact=args.compact_events or (args.report and not args.events),
        report=reporter,
        on_fail=args.on_fail,
        queue_spec=spec,
    )
    listener = control.ControlListener(url, args.queue, name, worker.command) if args.accept_control else None
    if listener is not None:
        listener.start()
    try:
        return worker.run()
    finally:
        if listener is not None:
            listener.stop()
        if reporter is not None:
            reporter.close()


if __name__ == "__main__":
    sys.exit(main())
