"""Provides the folding of dead workers: which keep their card a while, and one line for the rest.

Pure: reads the model's workers and ledger, so a replayed session folds exactly as a live one did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from tui.model.ledger import LOST, READY, MessageRecord
from tui.model.state import KILLED, Model, WorkerState

KEEP_DEAD = 10.0
"""Seconds a dead worker keeps its card after it died: long enough for a class to see the kill."""
NAMES_SHOWN = 6
"""A folded line names this many workers at most; the rest are counted."""

_GONE = frozenset({"killed", "worker exited", "killed, lost", "exited, lost"})
"""The outcomes the ledger gives a delivery whose worker went away while holding it."""


@dataclass(frozen=True, slots=True)
class Departures:
    """The dead workers folded into one line, and where the tasks they held went."""

    killed: tuple[str, ...]
    exited: tuple[str, ...]
    went_to: tuple[tuple[str, int], ...]
    """Each worker that got their tasks next, and how many, most first."""
    lost: int
    """Tasks they held under auto ack: the broker had forgotten them."""
    waiting: int
    """Tasks they held that are back in the queue, delivered to no one yet."""

    def describe(self) -> str:
        """One line, such as ``w3, w5, w9 killed: their tasks went to w1 (x3), w2 (x2); 1 lost`` (with a times sign)."""
        groups = ((self.killed, "killed"), (self.exited, "exited"))
        who = " · ".join(f"{_names(names)} {word}" for names, word in groups if names)
        dead = len(self.killed) + len(self.exited)
        their = "its" if dead == 1 else "their"
        fates = []
        if self.went_to:
            fates.append(f"{their} tasks went to " + ", ".join(f"{name} ×{count}" for name, count in self.went_to))
        if self.lost:
            fates.append(f"{self.lost} lost (auto ack)")
        if self.waiting:
            fates.append(f"{self.waiting} back in the queue")
        return f"{who}: {'; '.join(fates) if fates else 'held no tasks'} (F9, timeline: their history)"


def is_folded(worker: WorkerState, now: float, keep: float = KEEP_DEAD) -> bool:
    """Dead for longer than ``keep`` seconds: its card gives way to the folded line."""
    return not worker.alive and worker.exited_at is not None and now - worker.exited_at >= keep


def fold(model: Model, now: float, keep: float = KEEP_DEAD) -> tuple[list[str], list[str]]:
    """The workers that keep a card and those folded away, each in the order they appeared.

    With no live worker left the dead all keep their cards: the screen would show no worker at all
    (a replay of a session whose workers have all gone shows how each ended).
    """
    if not any(worker.alive for worker in model.workers.values()):
        return list(model.workers), []
    shown: list[str] = []
    folded: list[str] = []
    for name, worker in model.workers.items():
        (folded if is_folded(worker, now, keep) else shown).append(name)
    return shown, folded


def departures(model: Model, folded: Iterable[str]) -> Departures:
    """The folded workers in one line's worth: who died how, and where the tasks they held went."""
    dead = [model.workers[name] for name in folded]
    went_to, lost, waiting = _fates({w.name for w in dead}, model.ledger.records.values())
    return Departures(
        killed=tuple(w.name for w in dead if w.status is KILLED),
        exited=tuple(w.name for w in dead if w.status is not KILLED),
        went_to=tuple(sorted(went_to.items(), key=lambda item: -item[1])),
        lost=lost,
        waiting=waiting,
    )


def _fates(dead: set[str], records: Iterable[MessageRecord]) -> tuple[Counter[str], int, int]:
    """Where each task a dead worker held when it went was delivered next; or lost; or still waiting."""
    went_to: Counter[str] = Counter()
    lost = waiting = 0
    for record in records:
        deliveries = record.deliveries
        for index, delivery in enumerate(deliveries):
            if delivery.worker not in dead or delivery.outcome not in _GONE:
                continue
            if index + 1 < len(deliveries):
                went_to[deliveries[index + 1].worker] += 1
            elif record.state == LOST:
                lost += 1
            elif record.state == READY:
                waiting += 1
    return went_to, lost, waiting


def _names(names: tuple[str, ...]) -> str:
    if len(names) <= NAMES_SHOWN:
        return ", ".join(names)
    return ", ".join(names[:NAMES_SHOWN]) + f" and {len(names) - NAMES_SHOWN} more"
