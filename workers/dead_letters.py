"""Provides the dead-letter queue's side: what is in ``<queue>.dead`` and why, and moving it back for another try.

The broker dead-letters a message the work queue rejects (``basic.reject``
without requeue) or, on a quorum queue, returns more often than its delivery
limit, into the queue ``--dead-letter`` declared, with its reasons in headers:
``x-first-death-reason`` (``rejected``, ``delivery_limit``, ``expired``, ``maxlen``)
and ``x-death`` (a list per queue and reason, each with its ``count``).

Reading them takes them off the queue: ``peek`` gets them without acks and then
gives them all back (closing the channel requeues them where they were, measured on
3.10 with a classic queue), so the broker's count never moves. ``move_back``
publishes each one to the work queue with a confirm before it acks it off the dead
queue: a crash in between leaves a copy in both, never none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pika
import pika.exceptions

from workers.broker import BrokerError, connect
from workers.settings import scrub

PEEK_CAP = 200
"""Dead letters read at most per look: the panel shows the last few, the count comes from the broker."""
BODY_CHARS = 60


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message in the dead-letter queue, as its headers tell it."""

    msg_id: str | None
    body: str
    reason: str
    """``x-first-death-reason``: ``rejected``, ``delivery_limit``, ...; "" when it carries none."""
    times: int
    """``x-death``'s count for its first entry: how often it was dead-lettered that way."""
    source: str
    """``x-first-death-queue``: the queue it died in."""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value if isinstance(value, str) else ""


def read_letter(properties: Any, body: bytes) -> DeadLetter:
    """What a dead letter's properties and headers say."""
    headers = properties.headers or {}
    deaths = headers.get("x-death")
    first = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    reason = _text(headers.get("x-first-death-reason")) or _text(first.get("reason"))
    times = first.get("count")
    text = body[: BODY_CHARS * 4].decode("utf-8", "backslashreplace")[:BODY_CHARS]
    return DeadLetter(
        msg_id=properties.message_id,
        body=text,
        reason=reason,
        times=int(times) if isinstance(times, int) and not isinstance(times, bool) else 1,
        source=_text(headers.get("x-first-death-queue")) or _text(first.get("queue")),
    )


def peek(connection: pika.BlockingConnection, queue: str, cap: int = PEEK_CAP) -> list[DeadLetter] | None:
    """The first ``cap`` messages of ``queue``, oldest first, left where they are; None when it does not exist."""
    channel = connection.channel()
    letters: list[DeadLetter] = []
    try:
        for _ in range(cap):
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            letters.append(read_letter(properties, body))
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return None
        raise
    # Closing the channel gives back every unacked get, in place (a nack each would do the same, slower).
    channel.close()
    return letters


def move_back(connection: pika.BlockingConnection, dead_queue: str, work_queue: str, cap: int = 10_000) -> list[str]:
    """Move the messages ``dead_queue`` holds now to ``work_queue``; the ids moved (a message without one as "").

    Only as many as it held when asked: a task that fails again at once (under reject)
    comes back to the dead-letter queue meanwhile, and must not go round for ever.
    Each is published with a confirm (mandatory, its properties kept but the quorum
    queue's ``x-delivery-count``, which the work queue counts afresh) and only then
    acked off the dead queue.
    """
    channel = connection.channel()
    held = int(channel.queue_declare(dead_queue, passive=True).method.message_count)
    channel.confirm_delivery()
    moved: list[str] = []
    for _ in range(min(held, cap)):
        method, properties, body = channel.basic_get(dead_queue, auto_ack=False)
        if method is None:
            break
        headers = {k: v for k, v in (properties.headers or {}).items() if k != "x-delivery-count"}
        properties.headers = headers or None
        channel.basic_publish("", work_queue, body, properties=properties, mandatory=True)
        channel.basic_ack(method.delivery_tag)
        moved.append(properties.message_id or "")
    channel.close()
    return moved


class DeadLetterListener(Protocol):
    """Receives what the dead-letter watcher learns; called from its thread."""

    def dead_letters_sampled(self, ts: float, queue: str, count: int, letters: list[DeadLetter]) -> None: ...

    def dead_letters_moved(self, ts: float, queue: str, ids: list[str], error: str) -> None: ...


class DeadLetterWatcher:
    """Watches ``<queue>.dead`` on its own connection: its count (passive declare) and, when that changes, its letters.

    ``move_back()`` asks for every dead letter to go back to the work queue (reported
    through ``dead_letters_moved``).
    """

    def __init__(
        self,
        url: str,
        dead_queue: str,
        work_queue: str,
        listener: DeadLetterListener,
        *,
        interval: float = 0.5,
        connect_to: Callable[..., pika.BlockingConnection] = connect,
    ) -> None:
        self.url = url
        self.dead_queue = dead_queue
        self.work_queue = work_queue
        self.listener = listener
        self.interval = interval
        self._connect = connect_to
        self._stop = threading.Event()
        self._move = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dead-letters", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def move_back(self) -> None:
        self._move.set()

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                connection = self._connect(self.url, name="dispatch-lab dead letters")
            except BrokerError:
                if self._stop.wait(delay):
                    return
                delay = min(5.0, delay * 2)
                continue
            delay = 0.5
            try:
                self._watch(connection)
            except (pika.exceptions.AMQPError, OSError):
                pass  # the broker went (a restart): connect again
            finally:
                try:
                    if connection.is_open:
                        connection.close()
                except Exception:
                    pass

    def _watch(self, connection: pika.BlockingConnection) -> None:
        last: int | None = None
        while not self._stop.is_set():
            if self._move.is_set():
                self._move.clear()
                try:
                    ids = move_back(connection, self.dead_queue, self.work_queue)
                    error = ""
                except pika.exceptions.AMQPChannelError as exc:
                    ids, error = [], scrub(str(exc), self.url)
                self.listener.dead_letters_moved(time.time(), self.dead_queue, ids, error)
                last = None
            count = self._count(connection)
            if count is not None and count != last:
                letters = peek(connection, self.dead_queue) if count else []
                if letters is not None:
                    self.listener.dead_letters_sampled(time.time(), self.dead_queue, count, letters)
                    last = count
            connection.process_data_events(0)
            self._stop.wait(self.interval)

    def _count(self, connection: pika.BlockingConnection) -> int | None:
        """Ready messages in the dead-letter queue (a passive declare on a channel of its own), None when missing."""
        channel = connection.channel()
        try:
            result = channel.queue_declare(self.dead_queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return None
        channel.close()
        return int(result.method.message_count)
