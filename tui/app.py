"""Provides DispatchLab, the Textual app: composition, bindings and the view loop that folds and draws."""

from __future__ import annotations

import asyncio
import gc
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rich.console import RenderableType
from textual import events, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from tui.actions import LabActions
from tui.backend import Backend, LabConfig
from tui.commands import lab_commands
from tui.export import session_folder, write_ledger_csv
from tui.ledger import MessageRecord
from tui.pool import Arrival, head_lines, lines_in
from tui.runner import RunResult
from tui.scenarios import Scenario, builtin
from tui.session_log import SessionLog
from tui.state import Model
from tui.text import printable
from tui.widgets.lab_header import LabHeader
from tui.widgets.messages_screen import MessagesScreen
from tui.widgets.publisher import PublisherPane
from tui.widgets.queue_panel import QueuePanel
from tui.widgets.timeline_view import TimelineView
from tui.widgets.worker_card import WorkerCard
from workers.local_node import LocalNode
from workers.settings import mask_url

REFRESH_SECONDS = 1 / 8
SWITCH_INTERVAL = 0.001
FOLD_SLICE = 250
"""Observations decoded and folded between two chances for a key press: about 1 ms of CPU."""
INPUT_WAIT = 0.1
"""Seconds the view loop waits at most, after a key press, for the screen to show what it changed."""
BEHIND_DRAW_SECONDS = 0.25
DETAIL_SECONDS = 1.0
"""Behind a flood of events, the figures are drawn every BEHIND_DRAW_SECONDS, the details this often."""
FOLD_BUDGET = 0.03
"""Seconds a tick folds before it draws; it folds on between the parts it draws, and after them."""
FRAME_SECONDS = 1 / 60
"""Textual's screen update period: one part of the view is drawn per frame."""
CARD_PARTS = 4
"""Worker cards are shown in at most this many groups, each drawn in a frame of its own."""
GC_THRESHOLDS = (50_000, 20, 100)


class DispatchLab(LabActions):
    """The dashboard. With no backend it only shows its model (replays, snapshots)."""

    CSS_PATH = "app.tcss"
    TITLE = "dispatch-lab"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    """Below 100 columns the queue panel gives its width to the worker cards."""
    BINDINGS = [
        Binding("f1", "help", "Help", priority=True),
        Binding("f2", "add_worker", "+Worker", priority=True),
        Binding("f3", "kill", "Kill", priority=True),
        Binding("f4", "stop", "Stop", priority=True),
        Binding("f5", "restart", "Restart", priority=True),
        Binding("f6", "cycle_prefetch", "Prefetch", priority=True),
        Binding("f7", "cycle_ack", "Ack", priority=True),
        Binding("f8", "purge", "Purge", priority=True),
        Binding("f9", "messages", "Msgs", priority=True),
        Binding("f10", "restart_broker", "Broker↻", priority=True),
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("f12", "compare", "Compare", show=False, priority=True),
        Binding("ctrl+n", "select(1)", "Next worker", show=False, priority=True),
        Binding("ctrl+b", "select(-1)", "Previous worker", show=False, priority=True),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(
        self,
        config: LabConfig,
        model: Model,
        backend: Backend | None = None,
        *,
        clock: Callable[[], float] = time.time,
        presets: dict[str, Scenario] | None = None,
        log: SessionLog | None = None,
        title: str | None = None,
        node: LocalNode | None = None,
    ) -> None:
        super().__init__()
        if title:
            self.title = title
        self.config = config
        self.model = model
        self.backend = backend
        self.clock = clock
        self.presets = builtin() if presets is None else presets
        self.session_log = log
        self.node = node
        self.selected: str | None = None
        self.compare_results: list[list[RunResult]] = []
        self._cards: dict[str, WorkerCard] = {}
        self._ticking = False
        self._detailed = 0.0
        self._drawn = 0.0
        self._input_shown: asyncio.Event | None = None
        """Set once the screen shows what the last key press changed; None when nothing waits for it."""
        self._paint_waiters: list[asyncio.Event] = []
        """Key presses' events to set at the next screen update."""
        self._backlog: deque[Arrival] = deque()
        """Taken from the inbox, not yet folded, oldest first."""

    def compose(self) -> ComposeResult:
        # Kept as attributes: the refresh timer must find them whichever screen is on top.
        self._header = LabHeader(id="header")
        self._queue_panel = QueuePanel(id="queue")
        self._grid = Grid(id="workers")
        self._timeline = TimelineView(id="timeline")
        self._publisher = PublisherPane(self.presets)
        yield self._header
        with Horizontal(id="main"):
            yield self._queue_panel
            with Vertical(id="right"):
                yield self._grid
                yield self._timeline
        yield self._publisher
        yield Footer()

    def on_mount(self) -> None:
        # The reader, monitor and publisher threads share the GIL with this one; at the default 5 ms
        # switch interval a key press can wait several intervals behind them under load.
        sys.setswitchinterval(SWITCH_INTERVAL)
        # The ledger keeps tens of thousands of small records, which a full collection walks every
        # time: measured at 100-170 ms, right in a key press's way. They hold no cycles, so full
        # collections can be rare; what exists at start is frozen out of them altogether.
        gc.set_threshold(*GC_THRESHOLDS)
        gc.freeze()
        if self.backend is not None:
            self.backend.start()
        self.refresh_view()
        self.run_worker(self._view_loop(), name="view", group="view")

    # ----- the view loop: fold what arrived, then render

    @property
    def unfolded(self) -> int:
        """Arrivals not folded into the model yet: in the inbox, or taken and waiting for a slice."""
        waiting = len(self.backend.inbox) if self.backend is not None else 0
        return waiting + len(self._backlog)

    def _fold_slice(self, *, refill: bool = True) -> bool:
        """Decode, log and fold about FOLD_SLICE observations of what has arrived; False when there was none.

        With ``refill=False`` only what was taken from the inbox before: a flood must not keep a tick from drawing.
        """
        if self.backend is None:
            return False
        if refill:
            self._take_arrivals()
        if not self._backlog:
            return False
        taken: list[Arrival] = []
        size = 0
        while self._backlog and size < FOLD_SLICE:
            item = self._backlog.popleft()
            lines = lines_in(item)
            if lines > FOLD_SLICE - size:
                # One read can hold a thousand lines and more when the reader got little CPU: fold its
                # head now and leave the rest, so that a key press never waits behind all of it.
                item, rest = head_lines(item, FOLD_SLICE - size)
                if rest is not None:
                    self._backlog.appendleft(rest)
                    lines = FOLD_SLICE - size
            taken.append(item)
            size += lines
        for part, logged in self.backend.inbox.slices(taken, size + 1):
            if self.session_log is not None:
                self.session_log.add(logged)
            self.model.apply_all(part)
        return True

    async def _view_loop(self) -> None:
        """About every REFRESH_SECONDS: fold what arrived, draw; the app's exit cancels it."""
        while True:
            began = time.perf_counter()
            await self._tick(began)
            await asyncio.sleep(max(0.0, began + REFRESH_SECONDS - time.perf_counter()))

    async def _tick(self, began: float) -> None:
        """Decode and fold in slices, then draw in parts, folding on in the gaps.

        Under a flood of events a whole tick is tens of milliseconds of CPU, and on
        two busy cores tens become hundreds: a key press that arrives meanwhile must
        not wait for all of it, only for the slice or part in progress. A backlog is
        folded in every gap the drawing leaves and until the next tick is due, and
        the screen moves on every tick with what is folded so far.
        """
        self._ticking = True
        try:
            self._take_arrivals()
            await self._fold_until(began + FOLD_BUDGET, refill=False)
            # Behind a flood, drawing took half the UI thread's time and put changed widgets in front
            # of every key press: then the figures are drawn every BEHIND_DRAW_SECONDS and the details
            # (timeline, lifelines, the cards' task and log lines) every DETAIL_SECONDS.
            details = not self._backlog or began - self._detailed >= DETAIL_SECONDS
            if details or began - self._drawn >= BEHIND_DRAW_SECONDS:
                self._drawn = began
                if details:
                    self._detailed = began
                await self._draw(details)
            await self._fold_until(began + REFRESH_SECONDS)
        finally:
            self._ticking = False

    async def _draw(self, details: bool) -> None:
        """Draw the view a part a frame; in between, the folding goes on a slice at a time.

        Each part is drawn by the next screen update (cards drawn later may show a little more).
        """
        for _ in self._render_parts(details=details):
            frame = time.perf_counter() + FRAME_SECONDS
            await self._fold_until(frame - FRAME_SECONDS / 4)
            await asyncio.sleep(max(0.0, frame - time.perf_counter()))
            if self._input_shown is not None:
                # A key came during the sleep: no next part's changed widgets in front of its update.
                await self._yield_to_input()

    async def _fold_until(self, deadline: float, *, refill: bool = True) -> None:
        """Fold slices until ``deadline`` (perf_counter) or until nothing is left, yielding between them."""
        while time.perf_counter() < deadline:
            await self._yield_to_input()  # first: a key that came meanwhile waits for no slice
            if not self._fold_slice(refill=refill):
                return

    def _take_arrivals(self) -> None:
        """Move what arrived into the backlog."""
        if self.backend is not None:
            self._backlog.extend(self.backend.inbox.take())

    async def _yield_to_input(self) -> None:
        """Let the loop run; after a key press, wait until the screen shows what the key changed.

        Folding and drawing on at once put the key's screen update behind more work and
        more changed widgets: 150-200 ms under a flood, where waiting for it takes a frame or two.
        """
        shown, self._input_shown = self._input_shown, None
        if shown is None:
            await asyncio.sleep(0)  # a key press waiting in the queue is handled here
            shown, self._input_shown = self._input_shown, None
            if shown is None:
                return
        try:
            await asyncio.wait_for(shown.wait(), INPUT_WAIT)
        except asyncio.TimeoutError:
            pass  # the screen is slow to settle: fold on rather than stall

    async def on_event(self, event: events.Event) -> None:
        await super().on_event(event)
        if isinstance(event, events.Key):
            # Priority bindings have run by now; a forwarded key is handled before the screen is idle.
            shown = asyncio.Event()
            self._input_shown = shown
            self._paint_waiters.append(shown)

    def _display(self, screen: Screen[Any], renderable: RenderableType | None) -> None:
        """Textual's hand-over of each screen update to the terminal: what a key changed is on screen now.

        ``call_after_refresh`` was not enough: when the screen went idle before a restyled
        card had asked it for a repaint, its callback ran before the update that showed the
        card (a test caught it 1 time in 5). Should Textual rename this hook, the view loop
        only waits INPUT_WAIT after each key.
        """
        super()._display(screen, renderable)
        if self._paint_waiters:
            for shown in self._paint_waiters:
                shown.set()
            self._paint_waiters.clear()

    def refresh_view(self) -> None:
        """Fold everything that arrived and redraw now."""
        if not self._ticking:
            self._take_arrivals()
            while self._fold_slice(refill=False):
                pass
        self._render_model()

    def _render_model(self) -> None:
        for _ in self._render_parts():
            pass

    def _render_parts(self, *, details: bool = True) -> Iterator[None]:
        """Show the model; yields between parts (the queue figures, groups of cards, the timeline).

        With ``details=False`` the figures only: no timeline, lifelines, or the cards' task and log lines.
        """
        now = self.clock()
        if not self._header.is_attached:
            return  # shutting down
        self._header.show(self.model, mask_url(self.config.url), self.config.durable, now, self.title)
        self._publisher.show(self.model, now)
        self._queue_panel.show(self.model, now, self.config.durable, details=details)
        grid = self._grid
        workers = list(self.model.workers.items())
        per_part = max(1, -(-len(workers) // CARD_PARTS)) if details else max(1, len(workers))
        for index, (name, worker) in enumerate(workers):
            if index % per_part == 0:
                yield
                if not self.is_running:
                    return  # the app began shutting down while this part waited: its widgets are going
            card = self._cards.get(name)
            if card is None:
                card = self._cards[name] = WorkerCard(name)
                grid.mount(card)
                if self.selected is None:
                    self.selected = name
            card.set_class(name == self.selected, "-selected")
            if card.is_mounted:
                card.show(worker, now, details=details)
        grid.set_class(len(self._cards) > 4, "-many")
        if details:
            yield
            if self.is_running:
                self._timeline.show(self.model, now)

    def on_worker_card_selected(self, message: WorkerCard.Selected) -> None:
        self.selected = message.name
        self.show_selection()

    def show_selection(self) -> None:
        """Mark the selected card at once, without waiting for (or doing) a full refresh.

        Only the two cards themselves are restyled, not their parts: ``-selected`` styles the
        card alone (app.tcss), and restyling every part took most of a key press's time under load.
        """
        for name, card in self._cards.items():
            selected = name == self.selected
            if card.has_class("-selected") != selected:
                card.set_class(selected, "-selected", update=False)
                self.stylesheet.update_nodes([card], animate=False)

    def on_publisher_pane_publish_tasks(self, message: PublisherPane.PublishTasks) -> None:
        if self.backend is None:
            self.notify("Read-only view: nothing to publish to.", severity="warning")
            return
        self.backend.publish(message.bodies)
        self.notify(f"Publishing {message.label} ({len(message.bodies)} tasks)", timeout=3, markup=False)
        if message.scenario is not None and message.scenario.actions:
            self.run_scenario_actions(message.scenario)

    def action_messages(self) -> None:
        self.push_screen(MessagesScreen(self.model, self.clock))

    def action_save(self) -> None:
        """Save a screenshot, the ledger and the event log into runs/session-…/ (files written off the UI thread).

        runs/ is in the current folder unless --runs-dir says otherwise. A folder that cannot be
        written (``cd /sys``) is a toast that says why; the dashboard runs on.
        """
        try:
            folder = session_folder(self.config.runs_dir)
            self.save_screenshot(filename="screen.svg", path=str(folder))
        except OSError as exc:
            self._save_failed(exc)
            return
        # A copy taken here, between two folds: the thread then reads records nobody adds to or drops.
        self._save_files(folder, list(self.model.ledger.records.values()))

    @work(thread=True, group="save", exit_on_error=False)
    def _save_files(self, folder: Path, records: list[MessageRecord]) -> None:
        try:
            rows = write_ledger_csv(records, folder / "ledger.csv")
            if self.session_log is not None:
                self.session_log.flush()
                shutil.copyfile(self.session_log.path, folder / "events.jsonl")
        except OSError as exc:  # a full disk, a folder removed meanwhile: say so, as for the screenshot
            self.call_from_thread(self._save_failed, exc)
            return
        dropped = self.session_log.dropped if self.session_log is not None else 0
        cut = f" (the event log hit its size cap: the last {dropped:,} events are not in it)" if dropped else ""
        self.call_from_thread(
            self.notify,
            f"Saved {rows} ledger rows, events and a screenshot to {printable(str(folder))}{cut}",
            timeout=8,
            markup=False,
        )

    def _save_failed(self, exc: OSError) -> None:
        """Say which path could not be written and the system's reason, as text (a path may hold brackets)."""
        where = f" {printable(str(exc.filename))}" if exc.filename else ""
        reason = exc.strerror or str(exc) or type(exc).__name__
        self.notify(
            f"Not saved: cannot write{where}: {reason}. Start with --runs-dir DIR to save elsewhere.",
            severity="error",
            timeout=10,
            markup=False,
        )

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield from lab_commands(self)
