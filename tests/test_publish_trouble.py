"""The publisher in trouble, in the model and on screen: a broker's block, a republish, a refused message.

Pure: recorded observations folded into a model, and the dashboard drawn from it
at 80x24 and 120x36 with no broker (tests/test_broker_alarm.py drives the real
publisher against a private node).
"""

from __future__ import annotations

import asyncio
import html
import re
import threading

import pytest

from tests.recordings import PREFIX, T0, replay
from tui.engine.backend import LabConfig
from tui.engine.session_log import decode, encode
from tui.model import observations as obs
from tui.model.ledger import COPY, DONE, FAILED, HELD, PUBLISHING, READY
from tui.model.state import Model
from tui.view.app import DispatchLab
from tui.view.widgets.publisher import publish_status
from workers import monitor, protocol
from workers.broker import BrokerError
from workers.monitor import PublisherThread
from workers.new_task import Outcome, Settled

ID = f"{PREFIX}-1"
REFUSED = "The broker refused the message: PRECONDITION_FAILED - message size 5 is too big."
LOST = "Lost the connection to the broker while publishing; the task may still be delivered."
HOSTILE = "low on [bold]memory[/] [/] [link=http://x]y[/link]\x1b[31m\r\tend"
"""A reason no broker sends, as a test of every place that shows one: markup, an ANSI escape, control characters."""
HOSTILE_SHOWN = "low on [bold]memory[/] [/] [link=http://x]y[/link]\\x1b[31m\\r\\tend"


def published(*more: obs.Observation) -> list[obs.Observation]:
    return [obs.BrokerStatus(T0, "connected"), obs.Published(ID, T0, "Task."), *more]


def received(worker: str, ts: float, *, redelivered: bool = False) -> protocol.Received:
    return protocol.Received(worker, ts, 1, ID, "Task.", redelivered)


def done(worker: str, ts: float) -> protocol.Done:
    return protocol.Done(worker, ts, 1, ID, True)


# ----- a block


def test_a_block_and_its_reason_are_folded_until_the_broker_lifts_it() -> None:
    model = replay(published(obs.PublisherBlocked(T0 + 1, "low on memory")))
    assert (model.publish_blocked, model.publish_blocked_since) == ("low on memory", T0 + 1)
    assert model.ledger.records[ID].state == PUBLISHING
    assert (model.ledger.published, model.ledger.confirmed) == (1, 0)

    model.apply(obs.PublisherBlocked(T0 + 5, "low on disk"))  # a second alarm while blocked: the block goes on
    assert (model.publish_blocked, model.publish_blocked_since) == ("low on disk", T0 + 1)

    model.apply_all([obs.PublisherUnblocked(T0 + 70), obs.Confirmed(ID, T0 + 70)])
    assert model.publish_blocked is None
    assert model.ledger.records[ID].state == READY and model.ledger.confirmed == 1


def test_the_publisher_status_says_blocked_with_the_reason_and_what_waits() -> None:
    model = replay(published(obs.PublisherBlocked(T0 + 1, "low on memory")))
    assert publish_status(model, T0 + 13).plain == (
        "⏸ blocked by the broker: low on memory for 12s · sends wait: 1 unconfirmed"
    )
    model.apply(obs.PublisherUnblocked(T0 + 14))
    assert publish_status(model, T0 + 15).plain == "⇡ sent 1 · confirmed 0 · returned/refused 0 · 1 unconfirmed"
    model.apply(obs.Confirmed(ID, T0 + 15))
    assert publish_status(model, T0 + 16).plain == ""


# ----- a burst in flight


def burst(sent: int, confirmed: int, failed: int) -> list[obs.Observation]:
    """``sent`` tasks published, the first ``confirmed`` confirmed, the next ``failed`` returned by the broker."""
    items: list[obs.Observation] = [obs.BrokerStatus(T0, "connected")]
    items += [obs.Published(f"{PREFIX}-{n}", T0, "Task.") for n in range(1, sent + 1)]
    items += [obs.Confirmed(f"{PREFIX}-{n}", T0 + 0.1) for n in range(1, confirmed + 1)]
    unroutable = "The broker could not route the task to queue 'task_queue' (it does not exist)."
    items += [
        obs.PublishFailed(f"{PREFIX}-{n}", T0 + 0.1, unroutable) for n in range(confirmed + 1, confirmed + failed + 1)
    ]
    return items


def test_the_publisher_status_shows_a_bursts_progress_while_tasks_wait_for_their_confirm() -> None:
    model = replay(burst(4210, 3980, 2))
    status = publish_status(model, T0 + 1)
    assert status.plain == "⇡ sent 4,210 · confirmed 3,980 · returned/refused 2 · 228 unconfirmed"
    model.apply_all([obs.Confirmed(f"{PREFIX}-{n}", T0 + 0.2) for n in range(3983, 4211)])
    assert publish_status(model, T0 + 1).plain.startswith("publish failed (#3982; 2 in all): The broker could not")


@pytest.mark.parametrize("size", [(80, 24), (120, 36)])
def test_a_bursts_progress_shows_under_the_publisher(size: tuple[int, int]) -> None:
    _, status, screen = asyncio.run(screen_text(replay(burst(10_000, 6_500, 0)), size))
    assert status == "⇡ sent 10,000 · confirmed 6,500 · returned/refused 0 · 3,500 unconfirmed"
    assert "⇡ sent 10,000 · confirmed 6,500" in screen


# ----- a republish


def test_a_republished_task_delivered_twice_is_one_task_sent_twice_not_a_redelivery() -> None:
    """The issue's case: both copies came unflagged, and the lifeline told of a requeue though w1 acked."""
    events = published(
        obs.Republished(ID, T0 + 31, LOST),
        obs.Confirmed(ID, T0 + 70),
        protocol.Ready("w1", T0, 11, "task_queue", 0, "manual"),
        protocol.Ready("w2", T0, 12, "task_queue", 0, "manual"),
        received("w1", T0 + 70.1),
        received("w2", T0 + 70.2),  # the broker got it twice: the second copy, while w1 still has the first
    )
    model = replay(events)
    record = model.ledger.records[ID]
    assert record.lifeline() == "#1 -> republished -> w1 -> waiting -> w2 (copy) -> waiting"
    assert record.deliveries[1].why == COPY and record.deliveries[0].outcome is None

    model.apply(done("w1", T0 + 71))
    assert record.lifeline() == "#1 -> republished -> w1 -> done -> w2 (copy) -> waiting"
    assert record.state == HELD, "w2 holds the other copy"
    model.apply(done("w2", T0 + 72))
    assert record.lifeline() == "#1 -> republished -> w1 -> done -> w2 (copy) -> done"
    assert record.state == DONE
    ledger = model.ledger
    assert (ledger.published, ledger.confirmed, ledger.republished, ledger.copies) == (1, 1, 1, 1)
    assert (ledger.redeliveries, ledger.done_messages, ledger.done_runs, ledger.duplicates) == (0, 1, 2, 1)
    assert model.workers["w1"].held == {} and model.workers["w2"].held == {}


def test_a_republished_task_the_broker_got_once_shows_the_republish_and_one_delivery() -> None:
    events = published(
        obs.Republished(ID, T0 + 2, LOST),
        obs.Confirmed(ID, T0 + 3),
        protocol.Ready("w1", T0, 11, "task_queue", 0, "manual"),
        received("w1", T0 + 4),
        done("w1", T0 + 5),
    )
    model = replay(events)
    assert model.ledger.records[ID].lifeline() == "#1 -> republished -> w1 -> done"
    assert (model.ledger.republished, model.ledger.copies, model.ledger.duplicates) == (1, 0, 0)


def test_a_redelivery_of_a_republished_task_is_still_a_redelivery() -> None:
    events = published(
        obs.Republished(ID, T0 + 2, LOST),
        obs.Confirmed(ID, T0 + 3),
        protocol.Ready("w1", T0, 11, "task_queue", 0, "manual"),
        protocol.Ready("w2", T0, 12, "task_queue", 0, "manual"),
        received("w1", T0 + 4),
        obs.WorkerExited("w1", T0 + 5, -9),
        received("w2", T0 + 6, redelivered=True),
        done("w2", T0 + 7),
    )
    record = replay(events).ledger.records[ID]
    assert record.lifeline() == "#1 -> republished -> w1 -> killed -> requeued -> w2 (redelivered) -> done"


# ----- a refused message


def test_a_failed_publish_keeps_the_brokers_reason_for_the_screen() -> None:
    reason = (
        "The broker refused the message: "
        "PRECONDITION_FAILED - message size 5000 is larger than configured max size 4096."
    )
    model = replay(published(obs.PublishFailed(ID, T0 + 1, reason)))
    record = model.ledger.records[ID]
    assert (record.state, record.failure) == (FAILED, reason)
    assert model.publish_failure == ("#1", reason)
    assert publish_status(model, T0 + 2).plain == f"publish failed (#1): {reason}"
    model.apply_all([obs.Published(f"{PREFIX}-2", T0 + 3, "Task."), obs.PublishFailed(f"{PREFIX}-2", T0 + 4, "No.")])
    assert publish_status(model, T0 + 5).plain == "publish failed (#2; 2 in all): No."


@pytest.mark.parametrize(
    "item",
    [
        obs.PublisherBlocked(T0 + 1, HOSTILE),
        obs.PublisherUnblocked(T0 + 2),
        obs.Republished(ID, T0 + 3, HOSTILE),
    ],
)
def test_the_new_observations_survive_the_session_log(item: obs.Observation) -> None:
    assert decode(encode(item)) == item


# ----- on screen


def app_for(model: Model) -> DispatchLab:
    config = LabConfig(url="amqp://guest:s3cret@localhost:5672/%2F", queue="task_queue")
    return DispatchLab(config, model, backend=None, clock=lambda: T0 + 13, presets={})


async def screen_text(model: Model, size: tuple[int, int]) -> tuple[str, str, str]:
    """The header's and the publisher status line's text, and the whole screen as an SVG's text."""
    app = app_for(model)
    async with app.run_test(size=size) as pilot:
        app.refresh_view()
        await pilot.pause()
        header = app.query_one("#header").render()
        status = app.query_one("#publish-status")
        assert status.display and 1 <= status.region.height <= 3 and status.region.bottom <= size[1], status.region
        screen = html.unescape(re.sub(r"<[^>]*>", "", app.export_screenshot())).replace("\xa0", " ")
        return str(header), str(status.render()), screen


@pytest.mark.parametrize("size", [(80, 24), (120, 36)])
def test_a_block_shows_in_the_header_and_the_publisher_pane_with_the_reason_as_text(size: tuple[int, int]) -> None:
    model = replay(published(obs.PublisherBlocked(T0 + 1, HOSTILE)))
    header, status, screen = asyncio.run(screen_text(model, size))
    assert header.startswith(f"● blocked by the broker: {HOSTILE_SHOWN[:39]}…"), header
    assert "connected" not in header
    assert status.startswith(f"⏸ blocked by the broker: {HOSTILE_SHOWN} for 12s"), status
    assert "● blocked by the broker: low on [bold]memory[/]" in screen
    assert "⏸ blocked by the broker: low on [bold]memory[/]" in screen


@pytest.mark.parametrize("size", [(80, 24), (120, 36)])
def test_a_failed_publish_shows_the_reason_under_the_publisher(size: tuple[int, int]) -> None:
    reason = f"The broker refused the message: {HOSTILE}."
    model = replay(published(obs.PublishFailed(ID, T0 + 1, reason)))
    header, status, screen = asyncio.run(screen_text(model, size))
    assert header.startswith("● connected")
    assert status == f"publish failed (#1): The broker refused the message: {HOSTILE_SHOWN}."
    assert "publish failed (#1): The broker refused the message: low on [bold]memory[/]" in screen


# ----- the dashboard's publisher thread, with a stand-in for its connection


class ScriptedPublisher:
    """Stands in for workers.new_task.Publisher: each try does what the script says, in turn.

    ``unreachable``: the connection cannot be made (nothing sent); ``lost``: sent, then the connection
    went (in doubt); ``refused``: the broker closed the channel on it; ``ok``: confirmed.
    """

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.sent: list[str] = []
        self._in_flight: list[tuple[str, str]] = []
        self._settled: list[Settled] = []

    def next_id(self) -> str:
        return ID

    def ensure_open(self) -> None:
        if self.script and self.script[0] == "unreachable":
            self.script.pop(0)
            raise BrokerError("Cannot reach a RabbitMQ broker at localhost:5672.", transient=True)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def has_room(self) -> bool:
        return not self._in_flight

    def send(self, body: str, msg_id: str) -> str:
        self.sent.append(msg_id)
        self._in_flight.append((msg_id, self.script.pop(0)))
        return msg_id

    def pump(self) -> None:
        for msg_id, what in self._in_flight:
            if what == "lost":
                self._settled.append(Settled(msg_id, Outcome.IN_DOUBT, LOST))
            elif what == "refused":
                self._settled.append(Settled(msg_id, Outcome.CHANNEL_CLOSED, REFUSED))
            else:
                self._settled.append(Settled(msg_id, Outcome.CONFIRMED))
        self._in_flight = []

    flush = pump

    def take_settled(self) -> list[Settled]:
        settled, self._settled = self._settled, []
        return settled

    def keep_alive(self) -> None:
        pass

    def close(self) -> None:
        pass


class Heard:
    """A MonitorListener that writes down what the publisher thread said."""

    def __init__(self) -> None:
        self.said: list[tuple[str, ...]] = []
        self.finished = threading.Event()

    def task_published(self, ts: float, msg_id: str, body: str) -> None:
        self.said.append(("published", msg_id))

    def task_confirmed(self, ts: float, msg_id: str) -> None:
        self.said.append(("confirmed", msg_id))
        self.finished.set()

    def task_failed(self, ts: float, msg_id: str, message: str) -> None:
        self.said.append(("failed", msg_id, message))
        self.finished.set()

    def task_republished(self, ts: float, msg_id: str, reason: str) -> None:
        self.said.append(("republished", msg_id, reason))

    def publisher_blocked(self, ts: float, reason: str) -> None:
        self.said.append(("blocked", reason))

    def publisher_unblocked(self, ts: float) -> None:
        self.said.append(("unblocked",))

    def queue_sampled(self, *args: object) -> None:
        pass

    def broker_status(self, ts: float, state: str, attempt: int, message: str) -> None:
        pass

    def queue_purged(self, ts: float, count: int) -> None:
        pass


def run_publisher(script: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[str, ...]], list[str]]:
    monkeypatch.setattr(monitor, "BACKOFF", (0.0,) * 5)
    heard = Heard()
    thread = PublisherThread("amqp://guest:guest@localhost:1/%2F", "task_queue", heard, prefix=PREFIX)
    scripted = ScriptedPublisher(script)
    thread.publisher = scripted  # type: ignore[assignment]
    thread.start()
    try:
        thread.submit(["Task."])
        assert heard.finished.wait(5)
    finally:
        thread.stop()
    return heard.said, scripted.sent


def test_a_try_lost_in_flight_is_sent_again_under_its_id_and_said_to_be_a_republish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    said, sent = run_publisher(["lost", "unreachable", "ok"], monkeypatch)
    # The try that could not connect sent nothing: one republish, not two.
    assert said == [("published", ID), ("republished", ID, LOST), ("confirmed", ID)]
    assert sent == [ID, ID]


def test_a_task_given_up_after_a_try_in_doubt_says_it_may_still_be_delivered(monkeypatch: pytest.MonkeyPatch) -> None:
    said, sent = run_publisher(["lost", "unreachable", "unreachable"], monkeypatch)
    assert said == [
        ("published", ID),
        ("failed", ID, "Cannot reach a RabbitMQ broker at localhost:5672. "
         "The task may still be delivered: an earlier try was sent, and never confirmed."),
    ]  # fmt: skip
    assert sent == [ID]


def test_a_refused_task_is_not_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    said, sent = run_publisher(["refused"], monkeypatch)
    assert said == [("published", ID), ("failed", ID, REFUSED)]
    assert sent == [ID]
