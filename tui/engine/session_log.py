"""Provides the session log: every observation as a JSON line, written off the UI thread, and read back.

Worker events keep their protocol form (``{"v": 1, "event": ...}``); the other
observations are ``{"obs": "<ClassName>", ...fields}``. ``read`` never raises on
a bad line: it skips it and counts it, so a truncated log still replays.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tui.engine.pool import Arrival, WorkerOutput, lines_in
from tui.model import observations as obs
from workers import protocol

_OBSERVATIONS: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        obs.WorkerSpawned,
        obs.WorkerExited,
        obs.WorkerStderr,
        obs.WorkerGarbage,
        obs.StopRequested,
        obs.RemoteWorkerHeard,
        obs.Published,
        obs.Confirmed,
        obs.PublishFailed,
        obs.Republished,
        obs.PublisherBlocked,
        obs.PublisherUnblocked,
        obs.QueueSample,
        obs.ManagementChecked,
        obs.BrokerStatus,
        obs.Purged,
        obs.ModeRequested,
        obs.SessionStarted,
        obs.BrokerRestarted,
        obs.RunStarted,
        obs.FailModeRequested,
        obs.DeadLettersSampled,
        obs.DeadLettersMoved,
    )
}


_NESTED = (obs.ExternalConsumer, obs.DeadLetterSeen)
"""Dataclasses held in an observation's tuples: written as objects."""


def encode(item: Arrival) -> str:
    """One JSON line for an observation or a worker event; a worker's clean output as it came."""
    if type(item) is WorkerOutput:
        return item.data.decode("utf-8", "replace")
    if isinstance(item, protocol.Event):
        return protocol.encode(item)
    data: dict[str, Any] = {"obs": type(item).__name__}
    for f in dataclasses.fields(item):
        value = getattr(item, f.name)
        if isinstance(value, tuple):
            value = [dataclasses.asdict(v) if isinstance(v, _NESTED) else v for v in value]
        data[f.name] = value
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n"


def decode(line: str | bytes) -> obs.Observation | None:
    """The observation in one line, or None."""
    event = protocol.decode(line)
    return event if event is not None else _observation(line)


def _observation(line: str | bytes) -> obs.Observation | None:
    """The dashboard's own observation (not a worker event) in one line, or None."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    cls = _OBSERVATIONS.get(str(data.pop("obs", "")))
    if cls is None:
        return None
    try:
        if cls is obs.QueueSample and isinstance(data.get("external"), list):
            external = [c for c in data["external"] if isinstance(c, dict) and _fits(obs.ExternalConsumer, c)]
            data["external"] = tuple(obs.ExternalConsumer(**c) for c in external)
        if cls is obs.ModeRequested and isinstance(data.get("names"), list):
            data["names"] = tuple(str(name) for name in data["names"])
        if cls is obs.DeadLettersMoved and isinstance(data.get("ids"), list):
            data["ids"] = tuple(str(name) for name in data["ids"])
        if cls is obs.DeadLettersSampled and isinstance(data.get("letters"), list):
            letters = [c for c in data["letters"] if isinstance(c, dict) and _fits(obs.DeadLetterSeen, c)]
            data["letters"] = tuple(obs.DeadLetterSeen(**c) for c in letters)
        if not _fits(cls, data):
            return None
        item: obs.Observation = cls(**data)
    except TypeError:
        return None
    return item


def _fits(cls: type[Any], data: dict[str, Any]) -> bool:
    """Every value has its field's type, as JSON gives it.

    Dataclasses check nothing, and a garbled line (``"code": "x"``) would decode
    fine, then crash the model that folds it; such a line is a bad line.
    """
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue  # its default applies, or cls() refuses the line
        value = data[f.name]
        kinds = {kind.strip().split("[")[0] for kind in str(f.type).split("|")}
        if value is None:
            fits = "None" in kinds
        elif isinstance(value, bool):
            fits = "bool" in kinds
        elif isinstance(value, int):
            fits = bool(kinds & {"int", "float"})
        else:
            fits = type(value).__name__ in kinds  # float, str, tuple (built above from a list)
        if not fits:
            return False
    return True


def read(path: Path) -> Iterator[obs.Observation]:
    """The observations in a saved log, in order; bad lines are skipped."""
    with path.open("rb") as stream:
        for line in stream:
            events = protocol.decode_all(line)  # a ``tasks`` line, kept as the worker wrote it, holds several
            if events is not None:
                yield from events
            elif (item := _observation(line)) is not None:
                yield item


DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""Where a session log stops growing: at thousands of tasks a second it would fill a disk in hours."""


class SessionLog:
    """Appends batches of observations to a file on a thread of its own, up to ``max_bytes``.

    Past the cap it stops writing and counts what it dropped (``dropped``), so a
    long run keeps its beginning and says plainly that the rest is missing.
    """

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.written = 0
        self.dropped = 0
        self._size = 0
        self._queue: queue.SimpleQueue[list[Arrival] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="session-log", daemon=True)
        self._flushed = threading.Event()
        self._stream: IO[str] | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = self.path.open("w", encoding="utf-8", buffering=1 << 16)
        self._thread.start()

    def add(self, items: list[Arrival]) -> None:
        if items and self._stream is not None:
            self._queue.put(items)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything added so far is on disk."""
        if self._stream is None:
            return
        self._flushed.clear()
        self._queue.put([])
        self._flushed.wait(timeout)

    def close(self) -> None:
        if self._stream is None:
            return
        self._queue.put(None)
        self._thread.join(5.0)
        self._stream.close()
        self._stream = None

    def _run(self) -> None:
        assert self._stream is not None
        while True:
            items = self._queue.get()
            if items is None:
                self._stream.flush()
                return
            if not items:
                self._stream.flush()
                self._flushed.set()
                continue
            if self._size >= self.max_bytes:
                self.dropped += sum(map(lines_in, items))
                continue
            text = "".join(encode(item) for item in items)
            self._stream.write(text)
            self._size += len(text)
            self.written += sum(map(lines_in, items))
