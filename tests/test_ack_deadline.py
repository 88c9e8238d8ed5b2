"""Tests ``dispatch-lab --broker private --ack-timeout S``: the node's consumer_timeout and the cards' deadline.

One private node for the module (about 10 s to boot), started the way the dashboard
starts it (tui.launch), and the dashboard's own pipeline on it.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from rich.console import Console

from tests.helpers import wait_until
from tui.engine.backend import Backend, LabConfig
from tui.launch import PRIVATE_TIMEOUT, TOLD_TIMEOUT, parse_config, start_private_node
from tui.model.state import Model
from tui.view.widgets.worker_card import _deadline
from workers import local_node
from workers.local_node import LocalNode
from workers.settings import DispatchMode

TIMEOUT = 3


def test_the_ack_timeout_is_set_on_a_private_node_and_told_otherwise() -> None:
    console = Console(file=io.StringIO())
    private = parse_config(["--broker", "private", "--ack-timeout", "10"], console)
    assert (private.ack_timeout, private.ack_timeout_source) == (10.0, PRIVATE_TIMEOUT)
    told = parse_config(["--broker", "url", "--ack-timeout", "900"], console)
    assert (told.ack_timeout, told.ack_timeout_source) == (900.0, TOLD_TIMEOUT)
    assert parse_config(["--broker", "url"], console).ack_timeout is None
    model = Model(ack_timeout=told.ack_timeout, ack_timeout_source=told.ack_timeout_source)
    assert model.ack_deadline() == (900.0, TOLD_TIMEOUT)


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[LabConfig, LocalNode]]:
    if local_node.rabbitmq_server_path() is None:
        pytest.skip("rabbitmq-server is not installed")
    config = parse_config(["--broker", "private", "--ack-timeout", str(TIMEOUT), "--workers", "2"], Console())
    config, private = start_private_node(config, Console(file=io.StringIO()))
    try:
        yield config, private
    finally:
        private.destroy()


@pytest.mark.timeout(90)
def test_a_long_task_shows_its_deadline_then_the_broker_takes_it_back_when_due(
    node: tuple[LabConfig, LocalNode],
) -> None:
    config, private = node
    assert private.ack_timeout_ms == TIMEOUT * 1000 and private.channel_tick_ms is not None
    assert f"consumer_timeout = {TIMEOUT * 1000}" in (private.dir / "rabbitmq.conf").read_text()
    config = replace(config, queue="deadline", mode=DispatchMode(1, "manual"), seconds_per_dot=1.0)
    backend = Backend(config)
    model = Model(queue=config.queue, mode=config.mode, prefix=backend.prefix,
                  ack_timeout=config.ack_timeout, ack_timeout_source=config.ack_timeout_source)  # fmt: skip

    def fold() -> Model:
        model.apply_all(backend.inbox.drain())
        return model

    backend.start()
    try:
        wait_until(lambda: sum(w.status.consuming for w in fold().workers.values()) == 2, 30, "two workers")
        backend.publish(["slow......"])  # 6 s of work against a 3 s deadline
        busy = wait_until(
            lambda: next((w for w in fold().workers.values() if w.current is not None), None), 15, "a busy worker"
        )
        assert busy.current is not None
        assert (busy.current.deadline, busy.current.deadline_source) == (TIMEOUT, PRIVATE_TIMEOUT)
        shown = _deadline(busy.current, time.time()).plain
        assert shown.startswith("ack in ") and shown.endswith("s (set)")
        # The broker closes the channel when due (on a channel tick), and the task goes to the other worker.
        wait_until(lambda: fold().broker_closed is not None, TIMEOUT + 10, "the ack timeout")
        closed = model.broker_closed
        assert closed is not None and "delivery acknowledgement" in closed[2]
        record = next(iter(model.ledger.records.values()))
        wait_until(lambda: len(fold().ledger.records[record.msg_id].deliveries) >= 2, 10, "the redelivery")
        assert record.deliveries[1].why == "after an ack timeout" and record.deliveries[1].redelivered
        wait_until(lambda: fold().ledger.ack_lost >= 1, 15, "the late finish: worked, ack lost")
    finally:
        backend.shutdown()
