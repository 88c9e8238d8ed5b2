"""Provides the reference consumer the benchmarks measure our worker against: bare pika, ack in the callback.

``python -u -m benchmarks.bare_consumer --queue Q --prefetch P``; the broker URL
comes from AMQP_URL (never argv, where ``ps`` shows it). It declares the durable
queue, sets ``basic_qos(P)``, consumes with manual acks and writes, on stdout:

- ``ready`` once its consumer is registered;
- ``acked N`` (a running total) at most five times a second while it acks;
- after stdin closes, ``times [...]`` (the epoch time of every ack, as JSON), then it exits.

It imports nothing beyond pika and the standard library, so its start-up is the
floor a worker process can reach.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

import pika

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
REPORT_EVERY = 0.2
"""Seconds between progress lines; the benchmark polls, so this only bounds its wait."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bare_consumer", description=__doc__)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--prefetch", type=int, default=1)
    args = parser.parse_args(argv)

    connection = pika.BlockingConnection(pika.URLParameters(os.environ.get("AMQP_URL") or DEFAULT_URL))
    channel = connection.channel()
    channel.queue_declare(queue=args.queue, durable=True)
    channel.basic_qos(prefetch_count=args.prefetch)

    times: list[float] = []
    now = time.time

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        ch.basic_ack(delivery_tag=method.delivery_tag)
        times.append(now())

    reported = 0

    def report() -> None:
        nonlocal reported
        if len(times) != reported:
            reported = len(times)
            sys.stdout.write(f"acked {reported}\n")
            sys.stdout.flush()
        connection.call_later(REPORT_EVERY, report)

    def stop_on_eof() -> None:
        sys.stdin.buffer.read()
        connection.add_callback_threadsafe(channel.stop_consuming)

    channel.basic_consume(queue=args.queue, on_message_callback=on_message)
    connection.call_later(REPORT_EVERY, report)
    threading.Thread(target=stop_on_eof, name="stdin", daemon=True).start()
    print("ready", flush=True)
    channel.start_consuming()
    print("times " + json.dumps(times), flush=True)
    connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
