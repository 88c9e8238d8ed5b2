"""Provides the Pacer: what to fold and draw when, so a flood of events never stands between a key and the screen.

Textual-free: the view hands it a way to draw (an iterator that yields between the
parts of the screen), and tells it when a key arrived and when the screen updated.
Tests drive it with a plain asyncio loop, no Textual.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator

from tui.engine.pool import Arrival, Inbox, head_lines, lines_in
from tui.model import observations as obs

REFRESH_SECONDS = 1 / 8
FOLD_SLICE = 250
"""Observations decoded and folded between two chances for a key press: about 1 ms of CPU."""
INPUT_WAIT = 0.1
"""Seconds the view loop waits at most, after a key press, for the screen to show what it changed."""
BEHIND_DRAW_SECONDS = 0.25
DETAIL_SECONDS = 1.0
"""Behind a flood of events, the figures are drawn every BEHIND_DRAW_SECONDS, the details this often."""
FLOOD_EVENTS = 1_000
"""Observations folded since the last tick (8,000 a second) from which the pacer draws as behind a flood."""
FOLD_BUDGET = 0.03
"""Seconds a tick folds before it draws; it folds on between the parts it draws, and after them."""
FRAME_SECONDS = 1 / 60
"""Textual's screen update period: one part of the view is drawn per frame."""

SWITCH_INTERVAL = 0.001
GC_THRESHOLDS = (5_000, 200, 100)
"""A young collection every 5,000 allocations (about 1 ms), the middle and full ones as seldom as with 50,000 x 20.

At 50,000 each young collection took 12-27 ms of CPU during an 8-worker flood (a fed flood of 100,000
tasks: 6 of them) and on two busy cores 70-90 ms of wall time, right in a key press's way; at 5,000 it
takes 0.8 ms (p50; 51 of them, the same total). The middle generation still fills every 1,000,000.
"""

Draw = Callable[[bool], Iterator[None]]
"""Draws the view from the model, yielding between its parts; the flag asks for the details too."""


def tune_process() -> None:
    """Process-wide settings for a dashboard process; called once where the process starts.

    The reader, monitor and publisher threads share the GIL with the UI thread; at the
    default 5 ms switch interval a key press can wait several intervals behind them under
    load. The ledger keeps tens of thousands of small records, which a full collection
    walks every time: measured at 100-170 ms, right in a key press's way. They hold no
    cycles, so full collections can be rare; what exists at start is frozen out of them.
    Young collections are kept small and frequent (GC_THRESHOLDS) so that none is long.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()


class Pacer:
    """Takes arrivals from an inbox, folds them in slices, draws in parts, and yields to each key press.

    Under a flood of events a whole tick is tens of milliseconds of CPU, and on two busy
    cores tens become hundreds: a key press that arrives meanwhile must not wait for all of
    it, only for the slice or part in progress. A backlog is folded in every gap the drawing
    leaves and until the next tick is due, and the screen moves on every tick with what is
    folded so far.
    """

    def __init__(
        self,
        inbox: Inbox | None,
        fold: Callable[[list[obs.Observation]], None],
        draw: Draw,
        *,
        record: Callable[[list[Arrival]], None] | None = None,
    ) -> None:
        self.inbox = inbox
        self.fold = fold
        """Folds decoded observations into the model, in order."""
        self.draw = draw
        self.record = record
        """Keeps what was folded, as it arrived (the session log); None keeps nothing."""
        self.backlog: deque[Arrival] = deque()
        """Taken from the inbox, not yet folded, oldest first."""
        self.ticking = False
        self._detailed = 0.0
        self._drawn = 0.0
        self.folded = 0
        """Observations folded so far."""
        self._folded_at_tick = 0
        self._input_shown: asyncio.Event | None = None
        """Set once the screen shows what the last key press changed; None when nothing waits for it."""
        self._posted: asyncio.Event | None = None
        """The event of the keys posted and not yet handled: set by the screen update after the first one's handler."""
        self._handling: asyncio.Event | None = None
        """The event of the key whose handler is running: set by the screen update after it ran."""
        self._paint_waiters: list[asyncio.Event] = []
        """Key presses' events to set at the next screen update."""

    # ----- what the view tells the pacer

    def key_posted(self) -> None:
        """A key was put in the app's queue: fold and draw nothing from now until the screen shows what it changed.

        Said when the key is queued, not when its handler begins: the view loop's turn can come
        between the two, and a slice folded then stood between the key and its handler (under an
        8-worker flood, in 1 press of 3, 1-14 ms each on two busy cores). Keys queued together
        share one event; one that never reaches its handler holds nothing up beyond INPUT_WAIT.
        """
        if self._posted is None:
            self._posted = asyncio.Event()
        self._input_shown = self._posted

    def key_arrived(self) -> None:
        """A key is about to be handled: fold and draw nothing until the screen shows what it changed.

        Said before the handler runs, not after: the handler awaits (bindings, actions), and
        a slice folded in such a gap would stand between the key and its screen update.
        """
        shown, self._posted = self._posted or asyncio.Event(), None
        self._input_shown = self._handling = shown

    def key_handled(self) -> None:
        """The key's handler has run: the next screen update shows what it changed."""
        if self._handling is not None:
            self._paint_waiters.append(self._handling)
            self._handling = None

    def screen_updated(self) -> None:
        """The screen update that shows what the keys pressed so far changed has gone to the terminal."""
        if self._paint_waiters:
            for shown in self._paint_waiters:
                shown.set()
            self._paint_waiters.clear()

    # ----- folding

    @property
    def unfolded(self) -> int:
        """Arrivals not folded into the model yet: in the inbox, or taken and waiting for a slice."""
        waiting = len(self.inbox) if self.inbox is not None else 0
        return waiting + len(self.backlog)

    def take_arrivals(self) -> None:
        """Move what arrived into the backlog."""
        if self.inbox is not None:
            self.backlog.extend(self.inbox.take())

    def fold_slice(self, *, refill: bool = True) -> bool:
        """Decode, record and fold about FOLD_SLICE observations of what has arrived; False when there was none.

        With ``refill=False`` only what was taken from the inbox before: a flood must not keep a tick from drawing.
        """
        if self.inbox is None:
            return False
        if refill:
            self.take_arrivals()
        backlog = self.backlog
        if not backlog:
            return False
        taken: list[Arrival] = []
        size = 0
        while backlog and size < FOLD_SLICE:
            item = backlog.popleft()
            lines = lines_in(item)
            if lines > FOLD_SLICE - size:
                # One read can hold a thousand lines and more when the reader got little CPU: fold its
                # head now and leave the rest, so that a key press never waits behind all of it.
                item, rest = head_lines(item, FOLD_SLICE - size)
                if rest is not None:
                    backlog.appendleft(rest)
                    lines = FOLD_SLICE - size
            taken.append(item)
            size += lines
        for part, logged in self.inbox.slices(taken, size + 1):
            if self.record is not None:
                self.record(logged)
            self.fold(part)
            self.folded += len(part)
        return True

    def fold_all(self) -> None:
        """Fold everything that has arrived, now (not while a tick is under way: it folds on by itself)."""
        if not self.ticking:
            self.take_arrivals()
            while self.fold_slice(refill=False):
                pass

    # ----- the loop

    async def run(self) -> None:
        """About every REFRESH_SECONDS: fold what arrived, draw; cancel it to stop."""
        while True:
            began = time.perf_counter()
            await self.tick(began)
            await asyncio.sleep(max(0.0, began + REFRESH_SECONDS - time.perf_counter()))

    async def tick(self, began: float) -> None:
        """Decode and fold in slices, then draw in parts, folding on in the gaps."""
        self.ticking = True
        try:
            self.take_arrivals()
            await self._fold_until(began + FOLD_BUDGET, refill=False)
            # In a flood, behind or caught up, drawing took half the UI thread's time and put changed
            # widgets in front of every key press: then the figures are drawn every BEHIND_DRAW_SECONDS
            # and the details (timeline, lifelines, the cards' task and log lines) every DETAIL_SECONDS.
            # (Caught up, 8 workers draining: key latency p95 63-87 ms instead of 142-171.)
            flood = bool(self.backlog) or self.folded - self._folded_at_tick >= FLOOD_EVENTS
            self._folded_at_tick = self.folded
            details = not flood or began - self._detailed >= DETAIL_SECONDS
            if details or began - self._drawn >= BEHIND_DRAW_SECONDS:
                self._drawn = began
                if details:
                    self._detailed = began
                await self._draw(details)
            await self._fold_until(began + REFRESH_SECONDS)
        finally:
            self.ticking = False

    async def _draw(self, details: bool) -> None:
        """Draw the view a part a frame; in between, the folding goes on a slice at a time.

        Each part is drawn by the next screen update (cards drawn later may show a little more).
        """
        for _ in self.draw(details):
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
            if not self.fold_slice(refill=refill):
                return

    async def _yield_to_input(self) -> None:
        """Let the loop run; after a key press, wait until the screen shows what the key changed.

        Folding and drawing on at once put the key's screen update behind more work and
        more changed widgets: 150-200 ms under a flood, where waiting for it takes a frame or two.
        """
        shown, self._input_shown = self._input_shown, None
        if shown is None:
            await asyncio.sleep(0)  # a key press waiting in the queue is handled here
            shown, self._input_shown = self._input_shown, None
        while shown is not None:
            try:
                await asyncio.wait_for(shown.wait(), INPUT_WAIT)
            except asyncio.TimeoutError:
                pass  # the screen is slow to settle: fold on rather than stall
            # Another key may have come while this one waited (between the update and this task's turn).
            shown, self._input_shown = self._input_shown, None
