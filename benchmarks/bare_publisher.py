"""Provides the reference publishers the benchmarks measure ours against: bare pika, with and without confirms.

``python -u -m benchmarks.bare_publisher --queue Q --count N [--window W]``; the
broker URL comes from AMQP_URL (never argv). Both publish persistent 0-dot tasks
with a message id each, as ours do, to a queue that exists already:

- ``--window 0`` (the default): the tutorial's publisher, a BlockingConnection and
  ``basic_publish`` in a loop, no confirms: the fastest a plain pika program sends.
- ``--window W``: pika's asynchronous SelectConnection with publisher confirms,
  at most W unconfirmed at once (PerfTest's ``--confirm W``), mandatory: the
  floor for a publisher that knows each task reached the broker.

It prints ``timed [first publish, end]`` (epoch seconds; the end is the last
publish written without confirms, the last confirm with them), then exits.
It imports nothing beyond pika and the standard library.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from typing import Any

import pika
import pika.spec

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
BODY = b"Hello World!"


def publish_unconfirmed(url: str, queue: str, count: int) -> tuple[float, float]:
    """The tutorial's way: ``basic_publish`` in a loop on a BlockingConnection. (first publish, last one written)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        publish = channel.basic_publish
        started = time.time()
        for number in range(1, count + 1):
            properties = pika.BasicProperties(message_id=f"bare-{number}", delivery_mode=2, content_type="text/plain")
            publish(exchange="", routing_key=queue, body=BODY, properties=properties)
        return started, time.time()
    finally:
        connection.close()


def publish_windowed(url: str, queue: str, count: int, window: int) -> tuple[float, float]:
    """pika's asynchronous connection with confirms, ``window`` in flight at most. (first publish, last confirm)."""
    pending: collections.deque[int] = collections.deque()
    timed = [0.0, 0.0]
    sent = 0
    state: dict[str, Any] = {}

    def send_more() -> None:
        nonlocal sent
        channel = state["channel"]
        while sent < count and len(pending) < window:
            sent += 1
            properties = pika.BasicProperties(message_id=f"bare-{sent}", delivery_mode=2, content_type="text/plain")
            channel.basic_publish("", queue, BODY, properties, True)
            pending.append(sent)

    def on_confirm(frame: Any) -> None:
        method = frame.method
        if not isinstance(method, pika.spec.Basic.Ack):
            raise SystemExit(f"bare publisher: the broker refused task {method.delivery_tag}")
        tag = method.delivery_tag
        if method.multiple:
            while pending and pending[0] <= tag:
                pending.popleft()
        elif pending and pending[0] == tag:
            pending.popleft()
        else:
            pending.remove(tag)
        if sent == count and not pending:
            timed[1] = time.time()
            state["connection"].close()
        else:
            send_more()

    def on_selected(_frame: Any) -> None:
        timed[0] = time.time()
        send_more()

    def on_channel(channel: Any) -> None:
        state["channel"] = channel
        channel.add_on_return_callback(lambda *_: state.setdefault("returned", True))
        channel.confirm_delivery(on_confirm, callback=on_selected)

    def on_open(connection: Any) -> None:
        connection.channel(on_open_callback=on_channel)

    def on_failed(_connection: Any, error: BaseException) -> None:
        state["error"] = error
        _connection.ioloop.stop()

    def on_closed(_connection: Any, _reason: BaseException) -> None:
        _connection.ioloop.stop()

    connection = pika.SelectConnection(
        pika.URLParameters(url), on_open_callback=on_open, on_open_error_callback=on_failed,
        on_close_callback=on_closed,
    )  # fmt: skip
    state["connection"] = connection
    connection.ioloop.start()
    if "error" in state:
        raise SystemExit(f"bare publisher: could not connect: {state['error']}")
    if state.get("returned") or not timed[1]:
        raise SystemExit("bare publisher: not every task was confirmed and routed")
    return timed[0], timed[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bare_publisher", description=__doc__)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--window", type=int, default=0, help="confirms in flight at most; 0: no confirms")
    args = parser.parse_args(argv)
    url = os.environ.get("AMQP_URL") or DEFAULT_URL
    if args.window:
        timed = publish_windowed(url, args.queue, args.count, args.window)
    else:
        timed = publish_unconfirmed(url, args.queue, args.count)
    print("timed " + json.dumps(list(timed)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
