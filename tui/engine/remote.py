"""Provides RemoteWorkers: the reports of workers this dashboard does not run, put into its inbox.

Workers started with ``--report`` (on any machine) publish their event lines on the
broker's events exchange; ``workers.report.ReportFeed`` hands them here on its
thread. They go into the inbox as any worker's output does, undecoded, after a
``RemoteWorkerHeard`` the first time a name is heard from a process. Reports of
the pool's own workers (which report too when the dashboard shares its screen)
are left out: their pipes tell the same, sooner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tui.engine.pool import Inbox, WorkerOutput
from tui.model import observations as obs


class RemoteWorkers:
    """The names heard through the broker, and the door from the feed's thread into the inbox."""

    def __init__(self, inbox: Inbox, ours: Callable[[str], bool]) -> None:
        self.inbox = inbox
        self._ours = ours
        """True for a name of the pool's: heard on its pipe already."""
        self._lock = threading.Lock()
        self._pids: dict[str, int] = {}
        self._control: set[str] = set()
        """Names whose process last said (in its reports' headers) that it obeys the control exchange."""
        self.reports = 0
        """Messages heard so far (each a batch of lines)."""

    def names(self) -> set[str]:
        with self._lock:
            return set(self._pids)

    def accepts_control(self, name: str) -> bool:
        """The worker of this name said it obeys commands on the control exchange (``--accept-control``)."""
        with self._lock:
            return name in self._control

    def heard(self, name: str, host: str, pid: int, data: bytes, control: bool = False) -> None:
        """A report, on the feed's thread: the name (routing key), host and pid (as it said), its lines.

        ``control``: its headers say it obeys the control exchange.
        """
        if self._ours(name):
            return
        self.reports += 1
        with self._lock:
            new = self._pids.get(name) != pid
            if new:
                self._pids[name] = pid
                if control:
                    self._control.add(name)
                else:
                    self._control.discard(name)
        if new:
            self.inbox.put(obs.RemoteWorkerHeard(name, time.time(), host, pid, control))
        self.inbox.put_many([WorkerOutput(name, data if data.endswith(b"\n") else data + b"\n")])
