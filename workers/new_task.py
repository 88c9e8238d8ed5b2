"""Provides the publisher: tutorial 2's new_task.py with message ids, confirms and --count."""

from __future__ import annotations

import argparse
import itertools
import secrets
import sys
import time
from collections.abc import Iterable, Iterator

import pika
import pika.exceptions

from workers.broker import BrokerError, connect, declare_task_queue, explain_channel_error
from workers.settings import add_connection_args, url_or_exit


def new_session_prefix() -> str:
    """A short random prefix so ids from two runs on one durable queue never clash."""
    return secrets.token_hex(2)


class Publisher:
    """Publishes persistent tasks with a message_id each, confirmed, with mandatory routing."""

    def __init__(
        self,
        url: str,
        queue: str,
        *,
        durable: bool = True,
        persistent: bool = True,
        prefix: str | None = None,
        name: str = "dispatch-lab publisher",
    ) -> None:
        self.url = url
        self.queue = queue
        self.durable = durable
        self.persistent = persistent
        self.prefix = prefix or new_session_prefix()
        self.name = name
        self._numbers = itertools.count(1)
        self._connection: pika.BlockingConnection | None = None
        self._channel: pika.adapters.blocking_connection.BlockingChannel | None = None

    def open(self) -> None:
        """Connect, declare the queue and turn on publisher confirms."""
        connection = connect(self.url, name=self.name)
        try:
            channel = connection.channel()
            declare_task_queue(channel, self.queue, durable=self.durable)
            channel.confirm_delivery()
        except BaseException:
            connection.close()
            raise
        self._connection, self._channel = connection, channel

    def next_id(self) -> str:
        """The id the next task will carry."""
        return f"{self.prefix}-{next(self._numbers)}"

    def publish(self, body: str | bytes, msg_id: str | None = None) -> str:
        """Publish one task and wait for the broker's confirm; returns its message_id."""
        if self._channel is None:
            self.open()
        assert self._channel is not None
        msg_id = msg_id or self.next_id()
        data = body.encode() if isinstance(body, str) else body
        properties = pika.BasicProperties(
            message_id=msg_id,
            delivery_mode=pika.DeliveryMode.Persistent if self.persistent else pika.DeliveryMode.Transient,
            timestamp=int(time.time()),
            content_type="text/plain",
        )
        try:
            self._channel.basic_publish(
                exchange="", routing_key=self.queue, body=data, properties=properties, mandatory=True
            )
        except pika.exceptions.UnroutableError:
            raise BrokerError(
                f"The broker could not route the task to queue {self.queue!r} (it does not exist)."
            ) from None
        except pika.exceptions.NackError:
            raise BrokerError(f"The broker refused the task for queue {self.queue!r} (nack).") from None
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._channel = None
            raise BrokerError(explain_channel_error(exc, self.queue)) from None
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.StreamLostError):
            self._channel = self._connection = None
            raise BrokerError("Lost the connection to the broker while publishing.") from None
        return msg_id

    def publish_many(self, bodies: Iterable[str | bytes]) -> Iterator[str]:
        """Publish each body in turn, yielding each confirmed message_id."""
        for body in bodies:
            yield self.publish(body)

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                pass

    def __enter__(self) -> Publisher:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_parser(prog: str = "new_task") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Publish a task; each dot in it is a second of work for a worker."
    )
    add_connection_args(parser)
    parser.add_argument("--count", type=int, default=1, help="publish the task this many times")
    parser.add_argument("--transient", action="store_true", help="declare the queue non-durable")
    parser.add_argument("--no-persist", action="store_true", help="publish non-persistent messages")
    parser.add_argument("words", nargs="*", help='the task (default: "Hello World!")')
    return parser


def main(argv: list[str] | None = None, prog: str = "new_task") -> int:
    args = build_parser(prog).parse_args(argv)
    if not 1 <= args.count <= 10_000_000:
        print(f"{prog}: --count must be between 1 and 10000000, not {args.count}.", file=sys.stderr)
        return 2
    url = url_or_exit(args.url, prog)
    message = " ".join(args.words) or "Hello World!"
    publisher = Publisher(url, args.queue, durable=not args.transient, persistent=not args.no_persist)
    sent = 0
    try:
        publisher.open()
        for _ in publisher.publish_many(itertools.repeat(message, args.count)):
            sent += 1
            if args.count <= 10:
                print(f" [x] Sent {message!r}", flush=True)
    except BrokerError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        if sent:
            print(f"{prog}: {sent} of {args.count} tasks were sent before that.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted after {sent} of {args.count} tasks.", file=sys.stderr)
        return 130
    finally:
        publisher.close()
    if args.count > 10:
        print(f" [x] Sent {message!r} x{args.count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
