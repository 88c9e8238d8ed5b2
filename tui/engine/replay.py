"""Provides Replay: a saved session's model at any moment of it, stepped back and forth in time.

The model folds observations in order and cannot fold backwards, so a moment is
the model folded up to it. Forward is a fold of the events in between. Back
starts from the nearest checkpoint before the moment (the model as it was every
``every`` events, kept pickled) and folds forward from there. Measured on a
100,000-event log (20,000 tasks): a checkpoint restores in about 60 ms with the
garbage collector held off (180 ms with it), and at most ``every`` events fold
in about 22 ms; ``prepare`` restores the next step back's checkpoint ahead,
after the screen shows a step, so that a step back only folds
(tests/test_replay_steps.py measures a step).
"""

from __future__ import annotations

import bisect
import gc
import math
import pickle
from collections.abc import Sequence

from tui.model import observations as obs
from tui.model.state import Model
from workers import protocol

CHECKPOINT_EVENTS = 10_000
"""Events between two checkpoints: at most this many fold after a restore (about 22 ms)."""
MAX_CHECKPOINTS = 24
"""A longer log spaces its checkpoints further apart: each holds the whole model, pickled (5 MB at 20,000
tasks, 12 MB at the ledger's cap of 50,000), so a log of millions of events keeps under 300 MB of them."""

_NOT_A_STEP: tuple[type, ...] = (
    protocol.Alive,
    obs.QueueSample,
    obs.ManagementChecked,
    obs.Confirmed,
    obs.WorkerStderr,
    obs.WorkerGarbage,
    obs.SessionStarted,
)
"""What an event step passes over: heartbeats, samples and confirms come several times a second and move no task."""


def _ts(item: obs.Observation) -> float | None:
    ts = getattr(item, "ts", None)
    return float(ts) if isinstance(ts, (int, float)) and math.isfinite(ts) else None


class Replay:
    """A saved session's observations and one model that shows them up to ``position``, at the time ``now``.

    The view's widgets, its actions and any screen it opened all hold ``model``;
    a step changes that one object in place (a checkpoint's state is put into it),
    so none of them can be left showing another moment.
    """

    def __init__(
        self, items: Sequence[obs.Observation], model: Model | None = None, *, every: int | None = None
    ) -> None:
        self.items = list(items)
        self.model = model if model is not None else Model()
        self.every = every or max(CHECKPOINT_EVENTS, -(-len(self.items) // MAX_CHECKPOINTS))
        times: list[float] = []
        latest: float | None = None
        for item in self.items:
            ts = _ts(item)
            if ts is not None and (latest is None or ts > latest):
                latest = ts
            times.append(latest if latest is not None else 0.0)
        first = next((t for t in map(_ts, self.items) if t is not None), None)
        self.start = first if first is not None else 0.0
        self.end = latest if latest is not None else self.start
        # An event without a time (or before the first) is at the start: logs of old versions still step.
        self.times = [max(t, self.start) for t in times]
        """When each event happened, never going back: the latest time seen so far (clocks of processes differ)."""
        self.moments = sorted({self.times[i] for i, item in enumerate(self.items) if not isinstance(item, _NOT_A_STEP)})
        """The times something happened to a task, a worker or the broker: where an event step stops."""
        self.position = 0
        """How many of ``items`` the model has folded."""
        self.now = self.start
        """The replay's clock: the moment the model shows (the view's clock in a replay)."""
        self._checkpoints: list[bytes] = [self._pickled()]
        """The model after ``i * every`` events, pickled: restoring one makes new objects to fold into."""
        self._spare: tuple[int, Model] | None = None
        """A checkpoint restored ahead (``prepare``) and its index: a step back takes it instead of restoring."""
        for stop in range(self.every, len(self.items) + 1, self.every):
            self._fold_to(stop)
            self._checkpoints.append(self._pickled())
        self._fold_to(len(self.items))
        self.now = self.end

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def at_end(self) -> bool:
        return self.position == len(self.items) and self.now >= self.end

    # ----- moving

    def seek(self, when: float) -> None:
        """Show the session as it was at ``when`` (kept within the log): every event up to that time folded."""
        when = min(max(when, self.start), self.end)
        self._fold_to(bisect.bisect_right(self.times, when))
        self.now = when

    def step(self, seconds: float) -> None:
        """Move by ``seconds`` (back when negative)."""
        self.seek(self.now + seconds)

    def next_event(self) -> None:
        """Move to the next moment something happened (a delivery, a finish, a kill …); at the end, stay."""
        index = bisect.bisect_right(self.moments, self.now)
        self.seek(self.moments[index] if index < len(self.moments) else self.end)

    def previous_event(self) -> None:
        """Move to the moment before the last one shown, so that its events are undone; else to the start."""
        shown = bisect.bisect_right(self.moments, self.now) - 1
        self.seek(self.moments[shown - 1] if shown > 0 else self.start)

    def to_start(self) -> None:
        self.seek(self.start)

    def to_end(self) -> None:
        self.seek(self.end)

    # ----- saying where it is

    def describe(self, playing: bool = False) -> str:
        """Where the replay stands, for the header: ``replay ▶ 0:42.5 / 1:05.0 · event 120/345``."""
        return (
            f"replay {'▶ ' if playing else ''}{clock(self.now - self.start)} / {clock(self.end - self.start)}"
            f" · event {self.position}/{self.total}"
        )

    # ----- folding

    def prepare(self, back: float = 1.0) -> None:
        """Restore ahead, off the key's way, the checkpoint a step ``back`` seconds from here starts from.

        That step then only folds (at most ``every`` events); without it, it restores
        too (a few tens of ms at 20,000 tasks). Call it once the screen shows a step.
        """
        base = self._base(bisect.bisect_right(self.times, self.now - back))
        if base > 0 and (self._spare is None or self._spare[0] != base):
            self._spare = (base, self._loaded(self._checkpoints[base]))

    def _base(self, position: int) -> int:
        """The checkpoint a fold up to ``position`` starts from."""
        return min(position // self.every, len(self._checkpoints) - 1)

    def _fold_to(self, position: int) -> None:
        base = self._base(position)
        if position < self.position or base * self.every - self.position > self.every:
            # Back, or forward past a whole checkpoint's worth: folding all the way takes longer than a restore.
            # (Playback crosses a checkpoint a few events at a time: those it folds.)
            spare, self._spare = self._spare, None
            restored = spare[1] if spare is not None and spare[0] == base else self._loaded(self._checkpoints[base])
            state = vars(self.model)
            state.clear()
            state.update(vars(restored))
            self.position = base * self.every
        if position > self.position:
            self.model.apply_all(self.items[self.position : position])
            self.position = position

    def _pickled(self) -> bytes:
        return pickle.dumps(self.model, pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def _loaded(checkpoint: bytes) -> Model:
        # Tens of thousands of new objects at once set the collector off over and over, and each
        # pass walks the whole heap: a third of the restore's time. They hold no cycles to collect.
        collecting = gc.isenabled()
        gc.disable()
        try:
            restored: Model = pickle.loads(checkpoint)
        finally:
            if collecting:
                gc.enable()
        return restored


def clock(seconds: float) -> str:
    """``m:ss.s``: a lesson's length reads in minutes, a step of a second still shows."""
    seconds = round(max(0.0, seconds), 1)
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}"
