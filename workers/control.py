"""Provides commands over the broker: a worker's control listener, and the dashboard's sender.

A worker started with ``--report --accept-control`` binds an exclusive, auto-delete
queue to the topic exchange ``dispatch-lab.control`` with the routing key
``<queue>.<worker name>``, on a thread and a connection of its own (the work never
waits for it), and hands each command to the worker's own command queue: the same
JSON lines as on stdin (``protocol.encode_command``). A message that is not a
command is ignored with a line on stderr. A worker without ``--accept-control``
binds nothing, so no control message can reach it.

A dashboard's ``ControlSender`` publishes a command to each named worker with
``mandatory`` set and publisher confirms on: a message no queue is bound for (the
worker is gone, or does not listen) comes back from the broker, and the sender
says so through a callback rather than guess.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from workers import protocol
from workers.broker import BrokerError, Subscription, close_quietly, connect, declare_topic_exchange, routing_key
from workers.settings import scrub

EXCHANGE = "dispatch-lab.control"
"""The topic exchange dashboards send commands on (not durable: a command is for a worker listening now)."""
MAX_BODY = 4096
"""Bytes a control message may hold: a command is one short line; anything longer is not one."""
LISTENING = "takes stop and mode changes from dashboards on"
"""Said on stderr once the listener's queue is bound (again after each reconnect)."""
NOT_LISTENING = "the broker had no control queue for them (gone, or not listening)"


def declare_exchange(channel: Any) -> None:
    declare_topic_exchange(channel, EXCHANGE)


def describe(command: protocol.Command) -> str:
    """A command in a few words, for a line on the worker's stderr."""
    if isinstance(command, protocol.SetMode):
        return f"mode: prefetch {command.prefetch}, {command.ack} ack"
    if isinstance(command, protocol.SetFailMode):
        return f"on failure: {command.on_fail}"
    return "stop now" if command.now else "stop (after the task at hand)"


class ControlListener:
    """A worker's side: commands sent to ``<queue>.<name>`` go to ``obey``, on the listener's thread."""

    def __init__(self, url: str, queue_name: str, name: str, obey: Callable[[protocol.Command], None]) -> None:
        self.url = url
        self.name = name
        self.key = routing_key(queue_name, name)
        self.obey = obey
        self._subscription = Subscription(
            url,
            EXCHANGE,
            self.key,
            lambda method, properties, body: self.heard(body),
            connection_name=f"dispatch-lab {name} control (pid {os.getpid()})",
            thread_name="control",
            say=self._say,
        )
        self.bound = self._subscription.bound
        """Set while the listener's queue is bound: commands sent from then on reach it."""
        self.ignored = 0
        """Messages that were not commands."""

    def start(self) -> None:
        self._subscription.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._subscription.stop(timeout)

    def heard(self, body: bytes) -> None:
        """One control message: a command is obeyed, anything else ignored with a line on stderr."""
        command = protocol.decode_command(body) if len(body) <= MAX_BODY else None
        if command is None:
            self.ignored += 1
            print(f"{self.name}: ignored a control message that is not a command", file=sys.stderr, flush=True)
            return
        print(f"{self.name}: a dashboard says over {EXCHANGE}: {describe(command)}", file=sys.stderr, flush=True)
        self.obey(command)

    def _say(self, what: str, why: str) -> None:
        if what == "bound":
            print(f"{self.name}: {LISTENING} {EXCHANGE} ({self.key})", file=sys.stderr, flush=True)
        else:
            said = "paused" if what == "paused" else "connection lost"
            print(f"{self.name}: control {said}: {why}", file=sys.stderr, flush=True)


Unreached = Callable[[list[str], str], None]
"""Called on the sender's thread with the names a command did not reach, and why (one clause)."""


@dataclass(frozen=True)
class _Order:
    names: tuple[str, ...]
    command: protocol.Command
    unreached: Unreached


class ControlSender:
    """A dashboard's side: ``send`` queues a command for some workers and returns at once; a thread publishes it."""

    def __init__(self, url: str, queue_name: str) -> None:
        self.url = url
        self.queue_name = queue_name
        self._orders: queue.SimpleQueue[_Order | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self.sent = 0
        """Commands the broker routed to a worker's control queue so far."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="control-sender", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._orders.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def send(self, names: Sequence[str], command: protocol.Command, unreached: Unreached) -> None:
        """Send ``command`` to each worker named (never blocks); ``unreached`` hears of those it did not reach."""
        if names:
            self._orders.put(_Order(tuple(names), command, unreached))

    def _run(self) -> None:
        try:
            while True:
                try:
                    order = self._orders.get(timeout=5.0)
                except queue.Empty:
                    self._keep_alive()
                    continue
                if order is None:
                    return
                self._carry_out(order)
        finally:
            if self._connection is not None:
                close_quietly(self._connection)

    def _keep_alive(self) -> None:
        """Heartbeats for an idle connection (a BlockingConnection answers them only when asked to)."""
        if self._connection is None:
            return
        try:
            self._connection.process_data_events(0)
        except (pika.exceptions.AMQPError, OSError):
            self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            close_quietly(self._connection)
        self._connection = self._channel = None

    def _open(self) -> Any:
        if self._channel is None or not self._channel.is_open:
            self._drop()
            connection = connect(self.url, name="dispatch-lab control (commands to remote workers)")
            try:
                channel = connection.channel()
                declare_exchange(channel)
                channel.confirm_delivery()
            except BaseException:
                close_quietly(connection)
                raise
            self._connection, self._channel = connection, channel
        return self._channel

    def _carry_out(self, order: _Order) -> None:
        body = protocol.encode_command(order.command).encode()
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=1)
        left = list(order.names)
        missed: list[str] = []
        failure = ""
        for attempt in (1, 2):  # a connection that went stale while idle gets one fresh try
            try:
                channel = self._open()
                while left:
                    try:
                        channel.basic_publish(
                            EXCHANGE, routing_key(self.queue_name, left[0]), body, properties, mandatory=True
                        )
                        self.sent += 1
                    except pika.exceptions.UnroutableError:
                        missed.append(left[0])
                    del left[0]  # once the broker answered for it: a retry never sends a command twice
            except BrokerError as exc:
                failure = str(exc)
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._drop()
                failure = f"the broker connection failed: {scrub(str(exc), self.url)}"
                if attempt == 1:
                    continue
            break
        if missed:
            order.unreached(missed, NOT_LISTENING)
        if left:
            order.unreached(left, failure)
