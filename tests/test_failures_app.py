"""The dashboard with a poison task on a real broker: Ctrl+F switches the failure mode, Ctrl+R moves dead letters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from textual.widgets import Static

from tests.helpers import delete_queue
from tui.engine.backend import Backend, LabConfig
from tui.model.ledger import DEAD_LETTERED
from tui.model.state import Model
from tui.view.app import DispatchLab
from tui.view.widgets.dead_letters import DeadLetterPanel
from tui.view.widgets.messages_screen import MessagesScreen
from tui.view.widgets.queue_panel import QueueFigures
from tui.view.widgets.worker_card import WorkerCard
from workers.settings import DispatchMode, FailMode, QueueSpec


async def until(app: DispatchLab, condition: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        app.refresh_view()
        await asyncio.sleep(0.05)


def test_ctrl_f_ends_a_requeue_loop_with_reject_and_ctrl_r_moves_the_dead_letter_back(
    broker_url: str, queue_name: str
) -> None:
    config = LabConfig(url=broker_url, queue=queue_name, workers=1, mode=DispatchMode(1, "manual"),
                       seconds_per_dot=0.01, spec=QueueSpec(dead_letter=True))  # fmt: skip
    backend = Backend(config)
    model = Model(queue=queue_name, mode=config.mode, prefix=backend.prefix, spec=config.spec)
    app = DispatchLab(config, model, backend, presets={})
    notes: list[str] = []

    async def main() -> None:
        async with app.run_test(size=(120, 36)) as pilot:
            original = app.notify
            app.notify = lambda message, **kw: (notes.append(str(message)), original(message, **kw))[1]  # type: ignore[method-assign]
            await until(app, lambda: model.our_consumers() == 1, 30, "a worker")
            backend.publish(["Bad task!"])
            await until(app, lambda: model.ledger.failures >= 5, 15, "the requeue loop")
            app.refresh_view()
            figures = app.query_one(QueueFigures).rows
            assert any(row[0] == "failures" and "worker events" in row[3] for row in figures), figures
            assert any(row[0] == "requeued" for row in figures)
            await pilot.press("ctrl+f")
            assert backend.on_fail is FailMode.REJECT and "reject" in notes[-1]
            await until(app, lambda: model.workers["w1"].on_fail is FailMode.REJECT, 5, "the worker's on_fail")
            record = next(iter(model.ledger.records.values()))
            await until(app, lambda: record.state == DEAD_LETTERED and model.dead.count == 1, 10, "the dead letter")
            app.refresh_view()
            panel = app.query_one(DeadLetterPanel)
            text = str(panel.render())
            assert panel.display and f"dead letters in {queue_name}.dead: 1" in text and "#1 rejected" in text
            card = app.query_one(WorkerCard)
            assert "on fail reject" in str(card.border_subtitle)
            await pilot.press("f9")  # the ledger's summary counts the failures as the panel does
            await until(app, lambda: isinstance(app.screen, MessagesScreen), 5, "F9")
            summary = str(app.screen.query_one("#ledger-summary", Static).content)
            assert f"failures {model.ledger.failures} " in summary and "dead letters 1 " in summary, summary
            await pilot.press("escape")
            await pilot.press("ctrl+r")
            await until(app, lambda: model.dead.moved == 1, 10, "moved back")
            # Back in the work queue under reject: it fails once more, and is dead-lettered again.
            await until(app, lambda: record.failures == model.ledger.requeued + 2, 10, "its next try")
            await until(app, lambda: model.dead.count == 1 and record.state == DEAD_LETTERED, 10, "dead again")
            assert "moved back from the dead-letter queue" in [d.why for d in record.deliveries]

    try:
        asyncio.run(main())
    finally:
        backend.shutdown()
        delete_queue(broker_url, queue_name + ".dead")


def test_ctrl_r_without_a_dead_letter_queue_says_how_to_get_one(broker_url: str, queue_name: str) -> None:
    config = LabConfig(url=broker_url, queue=queue_name, workers=0)
    backend = Backend(config)
    app = DispatchLab(config, Model(queue=queue_name), backend, presets={})
    notes: list[str] = []

    async def main() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            original = app.notify
            app.notify = lambda message, **kw: (notes.append(str(message)), original(message, **kw))[1]  # type: ignore[method-assign]
            await pilot.press("ctrl+r")
            assert notes and "--dead-letter" in notes[-1]

    try:
        asyncio.run(main())
    finally:
        backend.shutdown()
