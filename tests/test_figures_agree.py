"""Issue 14, "figures that agree, and say why" and "modes and keys": each figure says what it counts and why.

Replays of recorded sessions through the pure model and the queue panel's rows, and
the dashboard without a broker (Pilot) for F9, the presets' keys, the palette and the header.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.text import Text
from textual.command import CommandList
from textual.message import Message
from textual.widgets import Button, DataTable, Input, Label, Static

from tests.recordings import PREFIX, SETTLE, T0, Recorder, replay
from tui.engine.backend import LabConfig
from tui.launch import BootLine, build_parser
from tui.model import observations as obs
from tui.model.ledger import LOST, PURGED, Delivery, LostCause
from tui.model.scenarios import Scenario
from tui.model.state import Model
from tui.teaching.compare import prefetch_note, verdict
from tui.view.actions import LabActions, no_workers, restart_fate
from tui.view.app import DispatchLab
from tui.view.widgets.compare_screen import CompareScreen
from tui.view.widgets.help_screen import HELP
from tui.view.widgets.messages_screen import MessagesScreen, timings
from tui.view.widgets.publisher import PublisherPane
from tui.view.widgets.queue_panel import AUTO_ACKED, _rows
from tui.view.widgets.worker_grid import WorkerGrid
from workers import protocol
from workers.local_node import BOOT_PHASES
from workers.settings import DEFAULT_URL, AckMode, DispatchMode, QueueSpec

PRESETS = {
    "burst": Scenario("burst", "Many quick tasks.", ("a", "b")),
    "tutorial": Scenario("tutorial", "The tutorial's five messages.", ("one.", "two..")),
}


def rows(model: Model, now: float) -> dict[str, tuple[str, str, str]]:
    return {label: (value, style, source) for label, value, style, source in _rows(model, now, False)}


# ----- auto ack: the cards' holds vs the panel's unacked


def auto_ack_backlog() -> Recorder:
    """Two workers under auto ack; six tasks dealt out at once, three each; each works on its first."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 4101, prefetch=1, ack="auto")
    r.spawn("w2", 4102, prefetch=1, ack="auto")
    r.after(1)
    r.publish(*["Task....."] * 6)
    r.receive("w1", 1, 3, 5)
    r.receive("w2", 2, 4, 6)
    r.start("w1", 1)
    r.start("w2", 2)
    r.after(1)
    r.sample(ready=0, consumers=2, unacked=0)
    return r


def test_under_auto_ack_the_panel_says_what_the_cards_hold_and_why_unacked_is_zero() -> None:
    r = auto_ack_backlog()
    model = replay(r.events)
    assert [w.in_hand for w in model.workers.values()] == [3, 3]  # each card: holds 3
    shown = rows(model, r.now)
    assert shown["unacked"][0] == "0"
    assert shown["held now"][0] == "0"
    assert shown["auto-acked"] == ("6", "bold", AUTO_ACKED)
    assert "forgot" in AUTO_ACKED


def test_manual_ack_shows_no_auto_acked_row() -> None:
    r = Recorder()
    r.connected()
    r.spawn("w1", 4101, prefetch=0)
    r.publish("a.", "b.")
    r.receive("w1", 1, 2)
    r.sample(ready=0, consumers=1, unacked=2)
    assert "auto-acked" not in rows(replay(r.events), r.now)


# ----- lost: each id with its cause


def restart_session(*, durable: bool | None, persistent_lost: bool = True) -> tuple[Recorder, Model]:
    """Manual ack, six tasks waiting, no worker died: the broker restarts and keeps nothing."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.publish(*["Task."] * 6)
    r.sample(ready=6, consumers=0)
    r.broker("lost", 1)
    r.after(3)
    r.add(obs.BrokerRestarted(r.now, kept=not persistent_lost, seconds=3.0, durable=durable))
    r.connected()
    r.sample(ready=0, consumers=0)
    return r, replay(r.events)


def test_a_transient_queue_lost_in_a_restart_says_so_not_auto_ack() -> None:
    r, model = restart_session(durable=False)
    ledger = model.ledger
    assert ledger.lost == 6
    assert ledger.lost_by == {LostCause.TRANSIENT_QUEUE: 6}
    assert {rec.lost_cause for rec in ledger.records.values()} == {LostCause.TRANSIENT_QUEUE}
    lost = rows(model, r.now)["lost"]
    assert lost == ("6", "bold red", "transient queue, broker restart")
    assert "auto ack" not in lost[2]
    assert "transient queue" in model.last_error


def test_non_persistent_messages_on_a_durable_queue_are_lost_as_such() -> None:
    r, model = restart_session(durable=True)
    assert model.ledger.lost_by == {LostCause.NOT_PERSISTENT: 6}
    assert rows(model, r.now)["lost"][2] == "not persistent, broker restart"
    record = model.ledger.records[f"{PREFIX}-6"]
    assert record.cause() == "not persistent, broker restart"
    assert "durable queue came back" in LostCause.NOT_PERSISTENT.sentence


def test_an_older_log_without_the_queue_kind_takes_it_from_the_session_start() -> None:
    r = Recorder()
    r.add(obs.SessionStarted(r.now, "task_queue", PREFIX, 0, "manual", False, "amqp://guest:***@h/%2F"))
    r.connected()
    r.publish("a.", "b.")
    r.add(obs.BrokerRestarted(r.now, kept=False, seconds=3.0))  # no ``durable``: written before it existed
    assert replay(r.events).ledger.lost_by == {LostCause.TRANSIENT_QUEUE: 2}


def test_causes_mixed_are_counted_each_and_purged_says_purged() -> None:
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 4101, prefetch=0, ack="auto")
    r.publish("a.....", "b.....", "c.", "d.")
    r.receive("w1", 1, 2)
    r.kill("w1")  # auto ack: the two it held are lost with it
    r.after(1)
    r.add(obs.Purged(r.now, 1))  # c
    r.add(obs.BrokerRestarted(r.now, kept=False, seconds=3.0, durable=False))  # d
    model = replay(r.events)
    ledger = model.ledger
    assert ledger.lost_by == {LostCause.WORKER_DIED: 2, LostCause.TRANSIENT_QUEUE: 1}
    assert rows(model, r.now)["lost"][2] == "2 auto ack, 1 transient queue"
    causes = {rec.label(): rec.cause() for rec in ledger.records.values()}
    assert causes == {
        "#1": "auto ack, worker died",
        "#2": "auto ack, worker died",
        "#3": "removed by purge",
        "#4": "transient queue, broker restart",
    }
    assert ledger.records[f"{PREFIX}-3"].state == PURGED


def test_the_restart_toast_says_which_of_queue_or_messages_is_transient() -> None:
    assert "survive" in restart_fate(True, True)
    durable_not_persistent = restart_fate(True, False)
    assert "non-persistent" in durable_not_persistent and "queue comes back" in durable_not_persistent
    assert restart_fate(False, True).startswith("transient queue")
    assert "non-persistent" in restart_fate(False, False) and "transient queue" in restart_fate(False, False)


# ----- F9: the cause of each lost id; waited and worked apart


def test_timings_split_the_wait_in_the_prefetch_window_from_the_work() -> None:
    delivery = Delivery("w1", T0, False, "first delivery", AckMode.MANUAL, ended=T0 + 9, outcome="done")
    delivery.started = T0 + 4
    assert timings(delivery) == ("4.00s", "5.00s")
    returned = Delivery("w1", T0, False, "first delivery", AckMode.MANUAL, ended=T0 + 2, outcome="returned")
    assert timings(returned) == ("2.00s", "-")
    waiting = Delivery("w1", T0, False, "first delivery", AckMode.MANUAL)
    assert timings(waiting) == ("…", "…")


def app_for(model: Model, config: LabConfig | None = None) -> DispatchLab:
    config = config or LabConfig(url="amqp://guest:s3cret@localhost:5672/%2F", queue="task_queue")
    return DispatchLab(config, model, backend=None, clock=lambda: T0 + 60, presets=PRESETS)


def plain(widget: Static) -> str:
    """What a Static shows, as text (a rich Table drawn 200 cells wide)."""
    console = Console(width=200)
    with console.capture() as capture:
        console.print(widget.content)
    return capture.get()


def test_f9_gives_each_lost_id_its_cause_and_the_time_waited_apart_from_worked() -> None:
    _, model = restart_session(durable=False)
    r = Recorder(t0=T0 + 10)
    r._published = 6  # after the restart session's six
    r.bodies = {7: "Heavy....."}
    r.spawn("w1", 4101, prefetch=0)
    r.add(obs.Published(f"{PREFIX}-7", r.now, "Heavy....."), obs.Confirmed(f"{PREFIX}-7", r.now))
    r.receive("w1", 7)
    r.after(4)
    r.start("w1", 7)
    r.after(5)
    r.done("w1", 7)
    model.apply_all(r.events)

    async def run() -> tuple[str, list[str], str]:
        app = app_for(model)
        async with app.run_test(size=(120, 36)) as pilot:
            app.push_screen(MessagesScreen(model, app.clock))
            await pilot.pause()
            screen = app.screen
            table = screen.query_one(DataTable)
            whys = [str(table.get_row(f"{PREFIX}-{n}")[3]) for n in (6, 7)]
            summary = plain(screen.query_one("#ledger-summary", Static))
            table.move_cursor(row=table.get_row_index(f"{PREFIX}-7"))
            await pilot.pause()
            detail = plain(screen.query_one("#message-detail", Static))
            return summary, whys, detail

    summary, whys, detail = asyncio.run(run())
    assert "#1 #2 #3 #4 #5 #6 (transient queue, broker restart)" in summary, summary
    assert whys == ["transient queue, broker restart", "first delivery"]
    assert "waited" in detail and "worked" in detail and "took" not in detail, detail
    assert "4.00s" in detail and "5.00s" in detail and "9.00s" not in detail, detail
    assert model.ledger.records[f"{PREFIX}-6"].state == LOST


# ----- the balance while settling


def test_the_balance_never_reads_more_out_than_in_while_the_figures_settle() -> None:
    """The management API's unacked trails by ~5 s: done and unacked both counted the same tasks."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 4101, prefetch=0)
    r.spawn("w2", 4102, prefetch=0)
    r.publish(*["Task."] * 5)
    r.receive("w1", 1, 3, 5)
    r.receive("w2", 2, 4)
    r.sample(ready=0, consumers=2, unacked=5)
    for worker, seq in (("w1", 1), ("w2", 2)):
        r.start(worker, seq)
        r.after(1)
        r.done(worker, seq)
    r.sample(ready=0, consumers=2, unacked=5)  # the API has not seen those two acks yet
    model = replay(r.events)
    published, out, holds = model.balance(r.now)
    assert holds is None and out > published  # the two sums disagree while the API lags
    label = rows(model, r.now)["balance"][2]
    assert label == "moving: 2 of 5 settled", label
    # Once quiet, the full check.
    for worker, seq in (("w1", 3), ("w2", 4), ("w1", 5)):
        r.start(worker, seq)
        r.after(1)
        r.done(worker, seq)
    r.after(SETTLE)
    r.sample(ready=0, consumers=2, unacked=0)
    assert rows(replay(r.events), r.now)["balance"] == ("✓", "bold green", "holds: 5 in = 5 out")


# ----- F1: what auto ack really does


def test_help_says_how_auto_ack_deals_a_backlog_not_that_one_worker_swallows_it() -> None:
    meaning, watch = AckMode.AUTO.help
    assert "swallow" not in HELP and "swallow" not in watch
    assert "round-robin" in watch and "whole share at once" in watch and "alone" in watch
    assert "prefetch limits nothing" in meaning
    assert watch in HELP


# ----- F12 compare: manual ack unless asked, and says when prefetch means nothing


class _App:
    def __init__(self) -> None:
        self.screens: list[Any] = []
        self.notes: list[str] = []

    def push_screen(self, screen: Any, callback: Callable[..., Any] | None = None) -> None:
        self.screens.append(screen)

    def notify(self, message: str, **_: Any) -> None:
        self.notes.append(message)


class _Backend:
    def __init__(self, mode: DispatchMode) -> None:
        self.mode = mode


def test_compare_runs_in_manual_ack_even_after_an_auto_ack_lesson() -> None:
    app = _App()
    config = LabConfig(url="amqp://guest:guest@localhost/%2F")
    backend = _Backend(DispatchMode(0, AckMode.AUTO))
    actions = LabActions(app, config, Model(), backend, PRESETS)  # type: ignore[arg-type]
    actions.compare()
    (screen,) = app.screens
    assert isinstance(screen, CompareScreen) and screen.ack is AckMode.MANUAL
    assert "manual ack" in screen._settings().plain
    screen.ack = AckMode.AUTO
    assert "prefetch limits nothing" in screen._settings().plain


def test_the_verdict_says_when_the_ack_mode_makes_prefetch_meaningless() -> None:
    assert prefetch_note(AckMode.MANUAL) == ""
    assert "prefetch limits nothing" in prefetch_note(AckMode.AUTO)

    class _Run:
        def __init__(self, prefetch: int, makespan: float) -> None:
            self.mode = DispatchMode(prefetch, AckMode.AUTO)
            self.timed_out = False
            self.makespan = makespan
            self.workers: list[Any] = []

    said = verdict([_Run(0, 4.0), _Run(1, 4.1)])  # type: ignore[list-item]
    assert said.startswith("Under auto ack prefetch limits nothing"), said
    assert "about the same time" in said


# ----- presets on keys, and first in the palette


def terminal_key(sequence: str) -> str:
    """The key Textual makes of what a terminal sends (its parser is private: here only to pin that behaviour)."""
    from textual._xterm_parser import XTermParser
    from textual.events import Key

    (event,) = [e for e in XTermParser().feed(sequence) if isinstance(e, Key)]
    return event.key


def test_each_preset_has_a_key_on_its_button_that_works_while_typing_a_task() -> None:
    sent: list[PublisherPane.PublishTasks] = []

    def hook(message: Message) -> None:
        if isinstance(message, PublisherPane.PublishTasks) and all(m is not message for m in sent):
            sent.append(message)  # the hook sees a message at each widget it bubbles through

    async def run() -> tuple[list[str], str]:
        app = app_for(Model())
        async with app.run_test(size=(120, 36), message_hook=hook) as pilot:
            labels = [str(button.label) for button in app.query(Button).filter(".preset")]
            labels.insert(0, str(app.query_one("#preset-keys", Label).render()))
            field = app.query_one("#task-body", Input)
            field.focus()
            # What a terminal sends for Alt+2 (ESC 2, as tmux passes it on), as Textual reads it; then Alt+1 as
            # a terminal with the kitty keyboard protocol reports it.
            await pilot.press(terminal_key("\x1b2"), "alt+1")
            await pilot.pause()
            return labels, field.value

    labels, typed = asyncio.run(run())
    assert labels == ["alt+", "1 burst", "2 tutorial"]
    assert [m.scenario.name for m in sent if m.scenario] == ["tutorial", "burst"]
    assert typed == "Hello..."  # nothing typed into the task


def test_the_palette_finds_presets_by_name_before_anything_else() -> None:
    """Typing the first letter of "tutorial" listed Theme, Quit and Screenshot first; the presets come first now."""

    async def hits(pilot: Any, typed: str, wanted: str) -> list[str]:
        await pilot.press(*typed)
        found: list[str] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(wanted in hit for hit in found[:1]):
            await pilot.pause(0.05)
            commands = pilot.app.screen.query(CommandList)
            if commands:
                options = commands.first()
                prompts = (str(options.get_option_at_index(i).prompt) for i in range(options.option_count))
                found = [prompt.split("\n")[0] for prompt in prompts]  # the title; its help is below it
        return found

    async def run() -> tuple[list[str], list[str]]:
        app = app_for(Model())
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.press("ctrl+p")
            await pilot.pause()
            first = await hits(pilot, "t", "Publish preset")
            more = await hits(pilot, "utor", "tutorial")
            return first, more

    first, more = asyncio.run(run())
    assert first and first[0].startswith("Publish preset: "), first
    assert {hit for hit in first if hit.startswith("Publish preset")} == {
        "Publish preset: burst",
        "Publish preset: tutorial",
    }
    assert first.index("Publish preset: burst") < first.index("Theme"), first
    assert more and more[0].startswith("Publish preset: tutorial"), more


# ----- the broker's kind and its boot


def test_the_header_says_the_broker_is_private_and_removed_on_exit() -> None:
    async def header(private: bool) -> str:
        config = LabConfig(url="amqp://guest:guest@127.0.0.1:40123/%2F", private_broker=private)
        app = app_for(Model(), config)
        async with app.run_test(size=(200, 50)):
            app.refresh_view()
            return str(app.query_one("#header", Static).render())

    assert "private broker (removed on exit)" in asyncio.run(header(True))
    assert "private broker" not in asyncio.run(header(False))


def test_the_boot_line_counts_the_seconds_while_a_phase_lasts() -> None:
    now = [100.0]
    line = BootLine(clock=lambda: now[0])
    line.update("booting Erlang VM")
    now[0] += 1
    line.update("waiting for AMQP port")
    now[0] += 2
    first = line.__rich__().plain
    now[0] += 9  # no new phase for 9 s: the line moves anyway
    later = line.__rich__().plain
    assert first == "Private RabbitMQ node (step 2 of 4): waiting for AMQP port … 3s", first
    assert later == "Private RabbitMQ node (step 2 of 4): waiting for AMQP port … 12s", later
    for phase in BOOT_PHASES:  # with the spinner, one line in a class's terminal
        line.update(phase)
        now[0] += 100
        assert len(line.__rich__().plain) + 2 <= 80, line.__rich__().plain


# ----- --help and --workers 0


def test_help_lists_every_command() -> None:
    text = build_parser().format_help()
    for command in ("worker", "new-task", "compare", "replay", "broker"):
        assert f"dispatch-lab {command}" in text, command


def hint_of(config: LabConfig) -> str:
    """What the empty grid says for a dashboard started with ``config`` ("" for none)."""
    grid = WorkerGrid()
    LabActions(_App(), config, Model(), _Backend(DispatchMode()), PRESETS).started(grid)  # type: ignore[arg-type]
    return "" if grid.empty_hint is None else grid.empty_hint.plain


def test_with_no_workers_the_empty_grid_says_press_f2_or_start_one_elsewhere() -> None:
    tutorial = LabConfig(url="amqp://guest:guest@localhost/%2F", workers=0, queue="lesson",
                         spec=QueueSpec(durable=False), hear_reports=False)  # fmt: skip
    said = hint_of(tutorial)
    assert said == "No workers yet. " + no_workers("lesson", False, False)
    assert "F2" in said and "dispatch-lab worker --queue 'lesson' --transient" in said
    assert "AMQP_URL" in said and "guest" not in said  # another broker: named, its password never
    assert "AMQP_URL" in hint_of(LabConfig(url=DEFAULT_URL, workers=0, private_broker=True, hear_reports=False))
    said = hint_of(LabConfig(url=DEFAULT_URL, workers=0, hear_reports=False))
    assert "AMQP_URL" not in said and "`dispatch-lab worker` in another terminal" in said
    # A dashboard that hears reports (the default): a student's worker reports, and takes the teacher's keys.
    said = hint_of(LabConfig(url=DEFAULT_URL, workers=0))
    assert "`dispatch-lab worker --report --accept-control` in another terminal or on a student's machine" in said
    assert hint_of(LabConfig(url="x", workers=2)) == ""
    assert hint_of(LabConfig(url=DEFAULT_URL, workers=0, watch_only=True)) == ""


def test_the_empty_grids_hint_goes_with_the_first_card() -> None:
    """It stood in a toast for 30 s at 80x24, over the cards of a class already reporting."""
    model = Model(queue="q", mode=DispatchMode(1, "manual"))
    app = DispatchLab(LabConfig(url=DEFAULT_URL, workers=0, queue="q"), model, None, presets={})
    app.view.grid.empty_hint = Text(hint_of(LabConfig(url=DEFAULT_URL, workers=0, queue="q")))

    async def run() -> tuple[bool, bool]:
        async with app.run_test(size=(80, 24)) as pilot:
            app.refresh_view()
            await pilot.pause()
            before = bool(app.query("#no-workers"))
            model.apply_all([protocol.Ready("[b]alice", T0, 7, "q", 1, "manual")])
            app.refresh_view()
            await pilot.pause()
            return before, bool(app.query("#no-workers"))

    before, after = asyncio.run(run())
    assert before and not after, (before, after)
