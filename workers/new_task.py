"""Provides the publisher: tutorial 2's new_task.py with message ids, confirms and --count."""

from __future__ import annotations

import argparse
import itertools
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pika
import pika.exceptions

from workers.broker import BLOCKED_TIMEOUT, BrokerError, connect, declare_task_queue
from workers.settings import (
    QueueSpec,
    SettingsError,
    add_connection_args,
    add_queue_args,
    queue_spec_or_exit,
    url_or_exit,
)


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


class Publisher:
    """Publishes persistent tasks with a message_id each, confirmed, with mandatory routing.

    While the broker blocks the connection (a memory or disk alarm) a publish
    waits for the confirm; ``on_blocked`` and ``on_unblocked`` are called on the
    publishing thread as the broker says so (``on_unblocked(False)`` when the block
    ends with the connection instead). After ``blocked_timeout`` seconds
    blocked pika drops the connection and ``publish`` raises ``TaskInDoubt``;
    None waits as long as the alarm lasts.
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
    ) -> None:
        self.url = url
        self.queue = queue
        self.durable = durable
        self.persistent = persistent
        self.prefix = prefix or new_session_prefix()
        self.name = name
        self.blocked_timeout = blocked_timeout
        self.on_blocked = on_blocked
        self.on_unblocked = on_unblocked
        self.queue_spec: QueueSpec | None = None
        """How the queue is declared (its type, delivery limit, dead letters); None: classic, ``durable``."""
        self.in_flight: str | None = None
        """The id of a task sent, neither confirmed nor refused yet: set while a publish waits, kept in doubt."""
        self.blocked: str | None = None
        """The broker's reason while it blocks this connection (``low on memory``, ``low on disk``), else None."""
        self._numbers = itertools.count(1)
        self._connection: pika.BlockingConnection | None = None
        self._channel: pika.adapters.blocking_connection.BlockingChannel | None = None

    def open(self) -> None:
        """Connect, declare the queue and turn on publisher confirms."""
        connection = connect(self.url, name=self.name, blocked_timeout=self.blocked_timeout)
        try:
            # BlockingConnection's own add_on_connection_blocked_callback holds the news until the next
            # process_data_events, and basic_publish waits for its confirm without one: the very wait a
            # block causes would hide it. The SelectConnection under it (pika 1.4.4's ``_impl``) calls
            # back at once, on this thread, from inside that wait.
            connection._impl.add_on_connection_blocked_callback(self._on_blocked)
            connection._impl.add_on_connection_unblocked_callback(self._on_unblocked)
            channel = connection.channel()
            declare_task_queue(channel, self.queue, durable=self.durable, spec=self.queue_spec)
            channel.confirm_delivery()
        except BaseException:
            connection.close()
            raise
        self._connection, self._channel = connection, channel

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

    def next_id(self) -> str:
        """The id the next task will carry."""
        return f"{self.prefix}-{next(self._numbers)}"

    def publish(self, body: str | bytes, msg_id: str | None = None) -> str:
        """Publish one task and wait for the broker's confirm; returns its message_id.

        Raises ``TaskInDoubt`` when the connection went while the task was on its
        way (it may still be delivered), ``BrokerError`` when it was refused or
        could not be sent at all.
        """
        channel = self._ready_channel()
        msg_id = msg_id or self.next_id()
        data = body.encode() if isinstance(body, str) else body
        properties = pika.BasicProperties(
            message_id=msg_id,
            delivery_mode=pika.DeliveryMode.Persistent if self.persistent else pika.DeliveryMode.Transient,
            timestamp=int(time.time()),
            content_type="text/plain",
        )
        self.in_flight = msg_id
        try:
            channel.basic_publish(exchange="", routing_key=self.queue, body=data, properties=properties, mandatory=True)
        except pika.exceptions.UnroutableError:
            self.in_flight = None
            raise BrokerError(
                f"The broker could not route the task to queue {self.queue!r} (it does not exist)."
            ) from None
        except pika.exceptions.NackError:
            self.in_flight = None
            raise BrokerError(f"The broker refused the message for queue {self.queue!r} (nack).") from None
        except pika.exceptions.ChannelClosedByBroker as exc:
            self.in_flight = self._channel = None
            raise BrokerError(f"The broker refused the message: {exc.reply_text}.") from None
        except pika.exceptions.ConnectionClosedByBroker as exc:
            self._drop()
            raise TaskInDoubt(
                f"The broker closed the connection while publishing ({exc.reply_text}); "
                "the task may still be delivered: it was sent, but not confirmed."
            ) from None
        except pika.exceptions.ConnectionBlockedTimeout:
            reason = self.blocked or "an alarm"
            self._drop()
            raise TaskInDoubt(
                f"The broker blocked publishing ({reason}) for over {self.blocked_timeout:g} s, so this gave up "
                "waiting; the task may still be delivered: it was sent, and the broker reads it once the alarm clears."
            ) from None
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.StreamLostError):
            self._drop()
            raise TaskInDoubt(
                "Lost the connection to the broker while publishing; "
                "the task may still be delivered: it was sent, but not confirmed."
            ) from None
        self.in_flight = None
        return msg_id

    def ensure_open(self) -> None:
        """Connect now, if need be (``BrokerError`` if it cannot), so that a publish sends at once."""
        self._ready_channel()

    def _ready_channel(self) -> pika.adapters.blocking_connection.BlockingChannel:
        """The channel to publish on: opened now if there is none, or the broker closed the last one."""
        connection = self._connection
        if connection is not None and not connection.is_open:
            self._drop()
            connection = None
        if connection is None:
            self.open()
        elif self._channel is None or not self._channel.is_open:
            channel = connection.channel()
            channel.confirm_delivery()
            self._channel = channel
        assert self._channel is not None
        return self._channel

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
            self._drop()

    def publish_many(self, bodies: Iterable[str | bytes]) -> Iterator[str]:
        """Publish each body in turn, yielding each confirmed message_id."""
        for body in bodies:
            yield self.publish(body)

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
    parser.add_argument("words", nargs="*", help="the task (default: \"Hello World!\"); '-' reads it from stdin")
    return parser


def read_body(args: argparse.Namespace) -> tuple[bytes, str]:
    """The task's bytes and how to show it once sent; SettingsError with one sentence when it cannot be read."""
    from_stdin = args.words == [STDIN]
    if args.file is None and not from_stdin:
        message = " ".join(args.words) or "Hello World!"
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
    publisher.queue_spec = spec
    sent = 0
    try:
        publisher.open()
        for _ in publisher.publish_many(itertools.repeat(body, args.count)):
            sent += 1
            if args.count <= 10:
                print(f" [x] Sent {shown}", flush=True)
    except BrokerError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        if sent:
            print(f"{prog}: {sent} of {args.count} tasks were confirmed before that.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        doubt = "; the one being sent may still be delivered" if publisher.in_flight else ""
        print(f"\n{prog}: interrupted after {sent} of {args.count} tasks{doubt}.", file=sys.stderr)
        return 130
    finally:
        publisher.close()
    if args.count > 10:
        print(f" [x] Sent {shown} x{args.count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
