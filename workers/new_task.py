"""Provides the publisher: tutorial 2's new_task.py with message ids, confirms and --count."""

from __future__ import annotations

import argparse
import enum
import itertools
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import pika.frame
import pika.spec

from workers.broker import BLOCKED_TIMEOUT, BrokerError, connect, declare_task_queue
from workers.settings import (
    DEFAULT_TASK,
    QueueSpec,
    SettingsError,
    add_connection_args,
    add_queue_args,
    queue_spec_or_exit,
    url_or_exit,
)

WINDOW = 1000
"""Tasks sent and not yet confirmed, at most: the broker confirms them in batches (``multiple``), as they reach disk."""


FLUSH_EVERY = 64
"""Tasks sent between two looks at the connection: writes go out in batches, confirms are read between them."""


def _always() -> bool:
    return True


def _coalesce_writes(connection: pika.BlockingConnection | None) -> None:
    """Join what pika has buffered to send into one chunk, so that it goes out in one ``send``.

    pika 1.4.4's transport (``_AsyncTransportBase._produce``) calls ``socket.send``
    once per buffered frame, three per task (method, header, body): in a burst
    that was a third of the publishing thread's time (py-spy). A task's frames stay
    whole and in order; if pika no longer has these attributes, nothing is done
    (tests/test_publish_window.py fails then, to say so).
    """
    transport = getattr(getattr(connection, "_impl", None), "_transport", None)
    buffers = getattr(transport, "_tx_buffers", None)
    if buffers is not None and len(buffers) > 1:
        joined = b"".join(buffers)
        buffers.clear()
        buffers.append(joined)


def new_session_prefix() -> str:
    """A short random prefix so ids from two runs on one durable queue never clash."""
    return secrets.token_hex(2)


class TaskInDoubt(BrokerError):
    """The task was sent, but the connection went before the broker confirmed it: it may still be delivered.

    A memory or disk alarm makes this common: the broker stops reading from a
    publishing connection, and what was already sent is read, queued and
    delivered once the alarm clears, even after the connection is gone. Sending
    the task again can deliver it twice: a retry keeps its message id and says
    it is a republish.
    """


class Outcome(enum.Enum):
    """How the broker settled a task that was sent."""

    CONFIRMED = "confirmed"
    RETURNED = "returned"
    """Unroutable (mandatory): the broker sent it back, then confirmed; nothing was queued."""
    NACKED = "nacked"
    """The broker refused it (``basic.nack``): nothing was queued."""
    CHANNEL_CLOSED = "channel closed"
    """The broker closed the channel (``reason`` says why) before confirming it. Alone in flight, it was
    the task refused; among others, the refused one is one of them and those sent before it may be queued."""
    IN_DOUBT = "in doubt"
    """The connection went before the confirm: it may still be delivered."""

    @property
    def final(self) -> bool:
        """The broker has said for sure what became of the task (queued, or not)."""
        return self in (Outcome.CONFIRMED, Outcome.RETURNED, Outcome.NACKED)


@dataclass(frozen=True, slots=True)
class Settled:
    """What became of one task sent: its id, the outcome, and (unless confirmed) one sentence why."""

    msg_id: str
    outcome: Outcome
    reason: str = ""
    company: int = 1
    """Tasks of this publisher that were in flight with it when its channel or connection went (itself included)."""


class Publisher:
    """Publishes persistent tasks with a message_id each, mandatory, with a window of confirms in flight.

    ``send`` writes a task and returns at once while fewer than ``window`` tasks
    wait for their confirm; ``pump`` runs the connection until the broker settles
    some, and ``take_settled`` hands each task's outcome over once: a confirm, a
    return (unroutable), a nack, or, when the channel or connection went first,
    a task in doubt. A ``multiple`` ack settles every task up to its tag. ``publish``
    is the one-at-a-time form: send, wait for that task's outcome, raise unless confirmed.

    pika's BlockingChannel waits for each confirm in ``basic_publish``; the
    channel under it (pika 1.4.4's ``_impl``, a SelectConnection channel) takes
    ``confirm_delivery`` callbacks instead, which is what a window needs.

    While the broker blocks the connection (a memory or disk alarm) the broker
    reads nothing and confirms nothing: ``pump`` waits; ``on_blocked`` and
    ``on_unblocked`` are called on the publishing thread as the broker says so
    (``on_unblocked(False)`` when the block ends with the connection instead).
    After ``blocked_timeout`` seconds blocked pika drops the connection and what
    was in flight is settled in doubt; None waits as long as the alarm lasts.
    """

    def __init__(
        self,
        url: str,
        queue: str,
        *,
        durable: bool = True,
        persistent: bool = True,
        prefix: str | None = None,
        name: str = "dispatch-lab publisher",
        blocked_timeout: float | None = BLOCKED_TIMEOUT,
        on_blocked: Callable[[str], None] | None = None,
        on_unblocked: Callable[[bool], None] | None = None,
        window: int = WINDOW,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self.url = url
        self.queue = queue
        self.durable = durable
        self.persistent = persistent
        self.prefix = prefix or new_session_prefix()
        self.name = name
        self.blocked_timeout = blocked_timeout
        self.on_blocked = on_blocked
        self.on_unblocked = on_unblocked
        self.window = window
        self.queue_spec: QueueSpec | None = None
        """How the queue is declared (its type, delivery limit, dead letters); None: classic, ``durable``."""
        self.blocked: str | None = None
        """The broker's reason while it blocks this connection (``low on memory``, ``low on disk``), else None."""
        self._numbers = itertools.count(1)
        self._connection: pika.BlockingConnection | None = None
        self._channel: pika.adapters.blocking_connection.BlockingChannel | None = None
        self._unsettled: dict[int, str] = {}
        """Delivery tag -> message id of every task sent on this channel and not settled yet."""
        self._oldest = 1
        """No tag below this one is unsettled (a ``multiple`` ack settles from here up)."""
        self._next_tag = 1
        self._tags: dict[str, int] = {}
        """Message id -> tag, to find the task a ``basic.return`` (which has no tag) sends back."""
        self._returned: set[int] = set()
        """Tags the broker returned as unroutable, until their ack settles them."""
        self._settled: list[Settled] = []
        self._properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent if persistent else pika.DeliveryMode.Transient,
            content_type="text/plain",
        )

    # ----- connection

    def open(self) -> None:
        """Connect, declare the queue and turn on publisher confirms."""
        connection = connect(self.url, name=self.name, blocked_timeout=self.blocked_timeout)
        try:
            # BlockingConnection's own add_on_connection_blocked_callback holds the news until the next
            # process_data_events, and a wait for a confirm does not call that: the very wait a
            # block causes would hide it. The SelectConnection under it (pika 1.4.4's ``_impl``) calls
            # back at once, on this thread, from inside that wait.
            connection._impl.add_on_connection_blocked_callback(self._on_blocked)
            connection._impl.add_on_connection_unblocked_callback(self._on_unblocked)
            channel = connection.channel()
            declare_task_queue(channel, self.queue, durable=self.durable, spec=self.queue_spec)
            self._confirm_on(channel)
        except BaseException:
            connection.close()
            raise
        self._connection, self._channel = connection, channel

    def _confirm_on(self, channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
        """Confirm mode with our callbacks on the channel under the BlockingChannel (see the class docstring)."""
        selected: list[bool] = []
        impl = channel._impl
        impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _frame: selected.append(True))
        impl.add_on_return_callback(self._on_return)
        channel._flush_output(lambda: bool(selected))
        self._unsettled, self._tags, self._returned = {}, {}, set()
        self._oldest = self._next_tag = 1

    def ensure_open(self) -> None:
        """Connect now, if need be (``BrokerError`` if it cannot), so that a send goes out at once."""
        self._ready_channel()

    def _ready_channel(self) -> pika.adapters.blocking_connection.BlockingChannel:
        """The channel to publish on: opened now if there is none, or the broker closed the last one."""
        connection = self._connection
        if connection is not None and not connection.is_open:
            self._lose("the connection to the broker was closed")
            connection = None
        if connection is None:
            self.open()
        elif self._channel is None or not self._channel.is_open:
            channel = connection.channel()
            self._confirm_on(channel)
            self._channel = channel
        assert self._channel is not None
        return self._channel

    def _on_blocked(self, _connection: object, frame: Any) -> None:
        self.blocked = str(getattr(frame.method, "reason", "") or "no reason given")
        if self.on_blocked is not None:
            self.on_blocked(self.blocked)

    def _on_unblocked(self, _connection: object, _frame: object) -> None:
        self._end_block(lifted=True)

    def _end_block(self, *, lifted: bool) -> None:
        if self.blocked is None:
            return
        self.blocked = None
        if self.on_unblocked is not None:
            self.on_unblocked(lifted)

    # ----- sending and settling

    def next_id(self) -> str:
        """The id the next task will carry."""
        return f"{self.prefix}-{next(self._numbers)}"

    @property
    def in_flight(self) -> int:
        """Tasks sent whose outcome is not known yet."""
        return len(self._unsettled)

    def has_room(self) -> bool:
        """True while fewer than ``window`` tasks wait for their confirm."""
        return len(self._unsettled) < self.window

    def send(self, body: str | bytes, msg_id: str | None = None) -> str:
        """Send one task without waiting for its confirm; returns its message_id.

        Connects first if need be: ``BrokerError`` then means nothing was sent. Mind
        the window (``has_room``, ``pump``): ``send`` does not wait for room.
        """
        channel = self._ready_channel()
        msg_id = msg_id or self.next_id()
        data = body.encode() if isinstance(body, str) else body
        base = self._properties
        properties = pika.BasicProperties(
            message_id=msg_id,
            delivery_mode=base.delivery_mode,
            timestamp=int(time.time()),
            content_type=base.content_type,
        )
        tag = self._next_tag
        channel._impl.basic_publish("", self.queue, data, properties, True)
        self._next_tag = tag + 1
        self._unsettled[tag] = msg_id
        self._tags[msg_id] = tag
        return msg_id

    def take_settled(self) -> list[Settled]:
        """Every outcome learnt since the last call, in the order the broker gave them."""
        settled, self._settled = self._settled, []
        return settled

    def pump(self, until: Callable[[], bool] | None = None) -> None:
        """Run the connection (send what is buffered, take the broker's confirms) until ``until()``.

        By default until some task is settled (or nothing is in flight). A connection
        or channel that goes settles what was in flight as in doubt (or channel closed).
        """
        channel = self._channel
        if channel is None or not self._unsettled:
            return
        _coalesce_writes(self._connection)
        if until is None:
            seen = len(self._settled)
            until = lambda: len(self._settled) > seen or not self._unsettled  # noqa: E731
        try:
            channel._flush_output(until)
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._channel = None
            self._settle_all(Outcome.CHANNEL_CLOSED, f"The broker refused the message: {exc.reply_text}.")
        except pika.exceptions.ConnectionClosedByBroker as exc:
            self._lose(f"The broker closed the connection while publishing ({exc.reply_text})")
        except pika.exceptions.ConnectionBlockedTimeout:
            reason = self.blocked or "an alarm"
            self._lose(
                f"The broker blocked publishing ({reason}) for over {self.blocked_timeout:g} s, so this gave up "
                "waiting",
                after="it was sent, and the broker reads it once the alarm clears.",
            )
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.StreamLostError, pika.exceptions.AMQPChannelError):
            self._lose("Lost the connection to the broker while publishing")

    def flush(self) -> None:
        """Write out what is buffered and take in the confirms that came meanwhile; wait for nothing more."""
        self.pump(_always)

    def wait_all(self) -> None:
        """Pump until every task sent is settled."""
        while self._unsettled:
            self.pump(lambda: not self._unsettled)

    def _lose(self, what: str, *, after: str = "it was sent, but not confirmed.") -> None:
        """The connection went: what was in flight is in doubt; forget the connection."""
        count = len(self._unsettled)
        if count > 1:
            after = after.replace("it was", "they were")
            reason = f"{what}; the {count} tasks not confirmed yet may still be delivered: {after}"
        else:
            reason = f"{what}; the task may still be delivered: {after}"
        self._settle_all(Outcome.IN_DOUBT, reason)
        self._drop()

    def _settle_all(self, outcome: Outcome, reason: str) -> None:
        company = len(self._unsettled)
        self._settled.extend(Settled(msg_id, outcome, reason, company) for msg_id in self._unsettled.values())
        self._unsettled, self._tags, self._returned = {}, {}, set()
        self._oldest = self._next_tag

    def _on_return(self, _channel: object, _method: object, properties: Any, _body: bytes) -> None:
        # A basic.return has no delivery tag: the message id says which task it is. Its ack follows it.
        tag = self._tags.get(properties.message_id)
        if tag is not None:
            self._returned.add(tag)

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        last = int(method.delivery_tag)
        unsettled, settled = self._unsettled, self._settled
        tags: Iterable[int] = range(self._oldest, last + 1) if method.multiple else (last,)
        if isinstance(method, pika.spec.Basic.Nack):
            outcome, reason = Outcome.NACKED, f"The broker refused the message for queue {self.queue!r} (nack)."
        else:
            outcome, reason = Outcome.CONFIRMED, ""
        for tag in tags:
            msg_id = unsettled.pop(tag, None)
            if msg_id is None:
                continue
            del self._tags[msg_id]
            if self._returned and tag in self._returned:
                self._returned.discard(tag)
                if outcome is Outcome.CONFIRMED:
                    why = f"The broker could not route the task to queue {self.queue!r} (it does not exist)."
                    settled.append(Settled(msg_id, Outcome.RETURNED, why))
                    continue
            settled.append(Settled(msg_id, outcome, reason))
        oldest = max(self._oldest, last + 1) if method.multiple else self._oldest
        while oldest < self._next_tag and oldest not in unsettled:
            oldest += 1
        self._oldest = oldest

    def stream(self, bodies: Iterable[str | bytes]) -> Iterator[Settled]:
        """Send every body with the window of confirms, yielding each task's outcome as the broker gives it.

        Every task sent gets exactly one outcome (in doubt, when the connection went
        first). A ``BrokerError`` means the next task could not be sent at all.
        """
        for number, body in enumerate(bodies, 1):
            while not self.has_room():
                self.pump()
                yield from self.take_settled()
            self.send(body)
            if number % FLUSH_EVERY == 0:
                # Out with what is buffered, in with the confirms that came meanwhile; no waiting for more.
                self.flush()
                yield from self.take_settled()
        while self._unsettled:
            self.pump()
            yield from self.take_settled()
        yield from self.take_settled()

    def publish(self, body: str | bytes, msg_id: str | None = None) -> str:
        """Publish one task and wait for the broker's confirm; returns its message_id.

        What was sent before it is settled first (and kept for ``take_settled``).
        Raises ``TaskInDoubt`` when the connection went while the task was on its way
        (it may still be delivered), ``BrokerError`` when it was refused or could not be sent at all.
        """
        self.wait_all()
        mark = len(self._settled)
        msg_id = self.send(body, msg_id)
        self.wait_all()
        [settled] = self._settled[mark:]
        del self._settled[mark:]
        if settled.outcome is Outcome.CONFIRMED:
            return msg_id
        if settled.outcome is Outcome.IN_DOUBT:
            raise TaskInDoubt(settled.reason)
        raise BrokerError(settled.reason)

    def publish_many(self, bodies: Iterable[str | bytes]) -> Iterator[str]:
        """Publish each body in turn, one confirm at a time, yielding each confirmed message_id."""
        for body in bodies:
            yield self.publish(body)

    def keep_alive(self) -> None:
        """Let the connection answer heartbeats while nothing is published; a connection found gone is dropped.

        An idle BlockingConnection does no I/O, so the broker drops it after two
        missed heartbeats; the next publish would then fail on a dead socket.
        """
        connection = self._connection
        if connection is None:
            return
        try:
            connection.process_data_events(0)
        except pika.exceptions.AMQPError:
            self._lose("Lost the connection to the broker while publishing")

    def _drop(self) -> None:
        """Forget the connection (closing it if it can be closed); a blocked one ends its block."""
        self.close()
        self._end_block(lifted=False)

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        # A blocked connection is never closed politely: the broker reads nothing from it until the alarm
        # clears, not even our close, which would wait as long. Its socket goes with the object or the process.
        if connection is not None and connection.is_open and self.blocked is None:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                pass

    def __enter__(self) -> Publisher:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


STDIN = "-"
"""The one word that means: read the task from standard input."""
SHOWN_BODY = 60
"""Characters of a task ``[x] Sent`` shows; a longer one is shown by its start and its size."""


def build_parser(prog: str = "new_task") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Publish a task; each dot in it is a second of work for a worker.",
        epilog=(
            "The task comes from the words, or from standard input when the only word is '-' "
            f"(`some-command | {prog} -`), or from a file (--file PATH); those two send the bytes "
            "exactly as they are, a trailing newline too, with no limit but the broker's maximum "
            "message size (argv caps a word at 128 KiB and all of them at a few MB). While the "
            "broker blocks publishers (a memory or disk alarm) each task waits, up to --timeout; "
            "a task given up on may still be delivered once the alarm clears."
        ),
    )
    add_connection_args(parser)
    parser.add_argument("--count", type=int, default=1, help="publish the task this many times")
    add_queue_args(parser)
    parser.add_argument("--no-persist", action="store_true", help="publish non-persistent messages")
    parser.add_argument("--file", metavar="PATH", help="read the task from this file (its bytes as they are)")
    parser.add_argument(
        "--timeout", type=float, default=BLOCKED_TIMEOUT, metavar="SECONDS",
        help=f"how long a task waits while the broker blocks publishers (default {BLOCKED_TIMEOUT:g}; 0 = no limit)",
    )  # fmt: skip
    parser.add_argument("words", nargs="*", help=f"the task (default: {DEFAULT_TASK!r}); '-' reads it from stdin")
    return parser


def read_body(args: argparse.Namespace) -> tuple[bytes, str]:
    """The task's bytes and how to show it once sent; SettingsError with one sentence when it cannot be read."""
    from_stdin = args.words == [STDIN]
    if args.file is None and not from_stdin:
        message = " ".join(args.words) or DEFAULT_TASK
        return message.encode(), repr(message)
    where = "standard input" if from_stdin else args.file
    try:
        if from_stdin:
            data = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as stream:
                data = stream.read()
    except OSError as exc:
        raise SettingsError(f"cannot read the task from {where}: {exc.strerror or exc}.") from None
    if not data:
        raise SettingsError(f"the task from {where} is empty: nothing was sent.")
    text = data.decode("utf-8", "replace")
    shown = repr(text) if len(text) <= SHOWN_BODY else f"{text[: SHOWN_BODY - 20]!r}… ({len(data):,} bytes)"
    return data, shown


def _printable(text: str) -> str:
    """The broker's text with control characters escaped: it goes to a terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def main(argv: list[str] | None = None, prog: str = "new_task") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    spec = queue_spec_or_exit(parser, args)
    if not 1 <= args.count <= 10_000_000:
        print(f"{prog}: --count must be between 1 and 10000000, not {args.count}.", file=sys.stderr)
        return 2
    if not 0 <= args.timeout < 1e9:
        print(f"{prog}: --timeout must be 0 (no limit) or more seconds, not {args.timeout:g}.", file=sys.stderr)
        return 2
    if args.file is not None and args.words:
        print(f"{prog}: give the task as words, as '-' (standard input) or as --file PATH, not both.", file=sys.stderr)
        return 2
    url = url_or_exit(args.url, prog)
    try:
        body, shown = read_body(args)
    except SettingsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    timeout = args.timeout or None
    blocked_at = [0.0]

    def blocked(reason: str) -> None:
        blocked_at[0] = time.monotonic()
        limit = f"up to {timeout:g} s" if timeout else "until it clears"
        print(
            f"{prog}: the broker blocks publishers ({_printable(reason)}): waiting {limit} "
            "for it to take the task; Ctrl+C gives up.",
            file=sys.stderr, flush=True,
        )  # fmt: skip

    def unblocked(lifted: bool) -> None:
        if not lifted:
            return  # the connection went: what follows says so
        waited = time.monotonic() - blocked_at[0]
        print(f"{prog}: the broker takes publishes again (blocked {waited:.0f} s).", file=sys.stderr, flush=True)

    publisher = Publisher(
        url, args.queue, durable=not args.transient, persistent=not args.no_persist,
        blocked_timeout=timeout, on_blocked=blocked, on_unblocked=unblocked,
    )  # fmt: skip
    confirmed = 0
    publisher.queue_spec = spec
    try:
        publisher.open()
        for settled in publisher.stream(itertools.repeat(body, args.count)):
            if settled.outcome is not Outcome.CONFIRMED:
                _say_failure(prog, settled, confirmed, args.count, publisher.in_flight)
                return 1
            confirmed += 1
            if args.count <= 10:
                print(f" [x] Sent {shown}", flush=True)
    except BrokerError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        if confirmed:
            print(f"{prog}: {confirmed} of {args.count} tasks were confirmed before that.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        waiting = publisher.in_flight
        doubt = (
            "" if not waiting
            else "; the one being sent may still be delivered" if waiting == 1
            else f"; the {waiting} sent and not confirmed yet may still be delivered"
        )  # fmt: skip
        print(f"\n{prog}: interrupted after {confirmed} of {args.count} tasks{doubt}.", file=sys.stderr)
        return 130
    finally:
        publisher.close()
    if args.count > 10:
        print(f" [x] Sent {shown} x{args.count}")
    return 0


def _say_failure(prog: str, settled: Settled, confirmed: int, count: int, waiting: int) -> None:
    """The first task not confirmed, in one sentence; then what became of the others."""
    print(f"{prog}: {settled.reason}", file=sys.stderr)
    if confirmed:
        print(f"{prog}: {confirmed} of {count} tasks were confirmed before that.", file=sys.stderr)
    if settled.outcome is Outcome.CHANNEL_CLOSED and settled.company > 1:
        # The broker names no message when it closes a channel: those sent before the refused one may be queued.
        print(
            f"{prog}: {settled.company - 1} other tasks were in flight on that channel, not confirmed: "
            "some may still be delivered.",
            file=sys.stderr,
        )
    elif waiting:
        print(f"{prog}: {waiting} more tasks were sent and not confirmed yet: they may still be delivered.",
              file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
