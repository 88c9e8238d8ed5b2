"""Provides the reference consumer the benchmarks measure our worker against: bare pika, acks batched.

``python -u -m benchmarks.bare_consumer --queue Q --prefetch P [--ack-every N]``; the
broker URL comes from AMQP_URL (never argv, where ``ps`` shows it). It declares the
durable queue, sets ``basic_qos(P)`` and consumes with manual acks, the strongest way
plain pika does: one ``basic_ack(multiple=True)`` every N deliveries (half the
prefetch by default, so the broker refills the other half meanwhile; at prefetch 1
that is an ack per delivery), and a flush every 50 ms for a tail shorter than N.
Until issue 16 it acked each delivery on its own, which made our worker (acking
once per I/O cycle) look 2.6 times as fast at prefetch 50. It writes, on stdout:

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
FLUSH_EVERY = 0.05
"""Seconds after which a batch shorter than N is acked anyway."""


def ack_batch(prefetch: int) -> int:
    """Deliveries per ack by default: half the window (25 at prefetch 50), 25 when it is unlimited."""
    return max(1, prefetch // 2) if prefetch > 0 else 25


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bare_consumer", description=__doc__)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--prefetch", type=int, default=1)
    parser.add_argument("--ack-every", type=int, default=0, help="deliveries per multiple ack (default: prefetch/2)")
    args = parser.parse_args(argv)
    batch = args.ack_every or ack_batch(args.prefetch)

    connection = pika.BlockingConnection(pika.URLParameters(os.environ.get("AMQP_URL") or DEFAULT_URL))
    channel = connection.channel()
    channel.queue_declare(queue=args.queue, durable=True)
    channel.basic_qos(prefetch_count=args.prefetch)

    times: list[float] = []
    now = time.time
    held = [0, 0]
    """Deliveries not acked yet, and the last one's tag."""

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        if batch == 1:
            ch.basic_ack(delivery_tag=method.delivery_tag)
            times.append(now())
            return
        held[0] += 1
        held[1] = method.delivery_tag
        if held[0] >= batch:
            ch.basic_ack(delivery_tag=held[1], multiple=True)
            times.extend([now()] * held[0])
            held[0] = 0

    def flush() -> None:
        if held[0]:
            channel.basic_ack(delivery_tag=held[1], multiple=True)
            times.extend([now()] * held[0])
            held[0] = 0
        connection.call_later(FLUSH_EVERY, flush)

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
    if batch > 1:
        connection.call_later(FLUSH_EVERY, flush)
    threading.Thread(target=stop_on_eof, name="stdin", daemon=True).start()
    print("ready", flush=True)
    channel.start_consuming()
    print("times " + json.dumps(times), flush=True)
    connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
