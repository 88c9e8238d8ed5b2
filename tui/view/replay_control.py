"""Provides ReplayControl: the keys that move a replay through time, and its playback."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.binding import Binding
from textual.timer import Timer

from tui.engine.replay import Replay

STEP_SECONDS = 1.0
PLAY_TICK = 0.1
"""Seconds between two frames of playback, which runs at the recorded speed."""

_SECOND = Binding.Group("±1 s", compact=True)
_EVENT = Binding.Group("event", compact=True)
_EDGES = Binding.Group("start/end", compact=True)
BINDINGS = [
    Binding("left", "replay_step(-1)", "back 1 s", key_display="←", group=_SECOND, priority=True),
    Binding("right", "replay_step(1)", "forward 1 s", key_display="→", group=_SECOND, priority=True),
    Binding("comma", "replay_event(-1)", "previous event", key_display=",", group=_EVENT, priority=True),
    Binding("full_stop", "replay_event(1)", "next event", key_display=".", group=_EVENT, priority=True),
    Binding("home", "replay_edge(-1)", "start", key_display="⇱", group=_EDGES, priority=True),
    Binding("end", "replay_edge(1)", "end", key_display="⇲", group=_EDGES, priority=True),
    Binding("space", "replay_play", "Play", key_display="␣", priority=True),
]
"""The app's bindings for a replay, first in its footer; shown and active in a replay only, on the main screen."""
ACTIONS = frozenset(binding.action.partition("(")[0] for binding in BINDINGS)


class ReplayControl:
    """Moves the replay a step at a time or plays it at the recorded speed, and redraws after each move."""

    def __init__(
        self,
        replay: Replay,
        redraw: Callable[[], None],
        every: Callable[[float, Callable[[], None]], Timer],
        after_refresh: Callable[[Callable[[], None]], object],
    ) -> None:
        self.replay = replay
        self._redraw = redraw
        self._every = every
        """Starts a timer (the app's ``set_interval``)."""
        self._after_refresh = after_refresh
        """Runs a callback once the screen shows what changed (the app's ``call_after_refresh``)."""
        self._timer: Timer | None = None
        self._played_at = 0.0
        self.moves = 0
        """How many times the replay moved: a drawing begun before a move stops (its parts show another moment)."""

    def start(self) -> None:
        """Once the replay shows: make the first step back ready."""
        self._after_refresh(self._prepare)

    @property
    def playing(self) -> bool:
        return self._timer is not None

    def describe(self) -> str:
        return self.replay.describe(self.playing)

    def step(self, direction: int) -> None:
        self.replay.step(direction * STEP_SECONDS)
        self._moved()

    def event(self, direction: int) -> None:
        if direction < 0:
            self.replay.previous_event()
        else:
            self.replay.next_event()
        self._moved()

    def edge(self, direction: int) -> None:
        if direction < 0:
            self.replay.to_start()
        else:
            self.replay.to_end()
        self._moved()

    def toggle_play(self) -> None:
        """Play from here (from the start when at the end), or pause."""
        if self._timer is not None:
            self.pause()
            return
        if self.replay.at_end:
            self.replay.to_start()
        self._played_at = time.monotonic()
        self._timer = self._every(PLAY_TICK, self._tick)
        self._redraw()

    def pause(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._redraw()

    def _tick(self) -> None:
        now = time.monotonic()
        self.replay.step(now - self._played_at)
        self._played_at = now
        self.moves += 1
        if self.replay.at_end:
            self.pause()  # redraws too
        else:
            self._redraw()

    def _moved(self) -> None:
        self.moves += 1
        self._played_at = time.monotonic()  # a step while playing plays on from the new moment
        self._redraw()
        self._after_refresh(self._prepare)  # the next step back, made ready once this one shows

    def _prepare(self) -> None:
        self.replay.prepare(STEP_SECONDS)
