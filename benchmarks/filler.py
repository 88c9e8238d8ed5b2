"""Provides the dashboard benchmarks' load: a publisher in a process of its own.

Kept apart from benchmarks.figures and benchmarks.dashboard so that starting it
imports neither Textual nor the figure table.
"""

from __future__ import annotations

import pika

from workers.broker import connect


def fill(url: str, queue: str, count: int) -> None:
    """Publish ``count`` 0-dot tasks as fast as the broker takes them (unconfirmed), while others consume."""
    connection = connect(url, name="dispatch-lab bench filler")
    try:
        channel = connection.channel()
        props = pika.BasicProperties(delivery_mode=2, content_type="text/plain")
        for i in range(count):
            channel.basic_publish(exchange="", routing_key=queue, body=b"quick task", properties=props)
            if i % 500 == 0:
                connection.process_data_events(0)
    finally:
        connection.close()
