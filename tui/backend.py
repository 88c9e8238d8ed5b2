"""Provides the dashboard's backend: the worker pool, the broker monitor and the publisher.

It turns what their threads learn into observations in one inbox; the app
drains the inbox on a timer and folds it into the model. A replay or a
snapshot runs the app with no backend at all.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tui import observations as obs
from tui.pool import Inbox, WorkerPool
from workers.broker import ConsumerInfo, ManagementApi
from workers.monitor import PublisherThread, QueueMonitor
from workers.new_task import new_session_prefix
from workers.settings import DispatchMode

ROUND_ROBIN = DispatchMode(prefetch=0, ack="manual")
_OUR_CONNECTION = re.compile(r"^dispatch-lab (?P<name>\S+) \(pid (?P<pid>\d+)\)$")


@dataclass(frozen=True)
class LabConfig:
    """What the dashboard was asked to run."""

    url: str
    queue: str = "task_queue"
    workers: int = 2
    mode: DispatchMode = ROUND_ROBIN
    seconds_per_dot: float = 1.0
    durable: bool = True
    persistent: bool = True
    heartbeat: int | None = None
    management_url: str | None = None
    private_broker: bool = False
    runs_dir: Path | None = None
    """Where Ctrl+S saves sessions; None: runs/ in the current folder."""


class Backend:
    """Everything with a thread or a process behind it; implements the monitor's listener."""

    def __init__(self, config: LabConfig, *, management: ManagementApi | None = None) -> None:
        self.config = config
        self.inbox = Inbox()
        self.prefix = new_session_prefix()
        self.pool = WorkerPool(
            config.url,
            config.queue,
            self.inbox,
            mode=config.mode,
            seconds_per_dot=config.seconds_per_dot,
            durable=config.durable,
            heartbeat=config.heartbeat,
        )
        self.management = management
        self.monitor = QueueMonitor(config.url, config.queue, self, management=management)
        self.publisher = PublisherThread(
            config.url,
            config.queue,
            self,
            prefix=self.prefix,
            durable=config.durable,
            persistent=config.persistent,
        )
        self._started = False
        self._shutdown_lock = threading.Lock()
        self._refusal: str | None = None
        """The management API's refusal as last reported to the model."""

    def start(self) -> None:
        self.monitor.start()
        self.publisher.start()
        self.pool.spawn_in_order(self.config.workers)
        self._started = True

    def shutdown(self) -> None:
        """Stop workers, publisher and monitor; safe to call twice, from any thread."""
        with self._shutdown_lock:
            if not self._started:
                return
            self._started = False
            self.publisher.cancel()
            self.pool.shutdown()
            self.publisher.stop()
            self.monitor.stop()

    # ----- MonitorListener: called from the monitor's and publisher's threads

    def queue_sampled(
        self,
        ts: float,
        ready: int,
        consumers: int,
        unacked: int | None,
        external: Sequence[ConsumerInfo] | None,
    ) -> None:
        api = self.management
        if api is not None and api.refusal != self._refusal:
            # Said once per change, before the first sample that goes without the API's figures.
            self._refusal = api.refusal
            self.inbox.put(obs.ManagementChecked(ts, api.describe(), api.refusal or ""))
        others: tuple[obs.ExternalConsumer, ...] | None = None
        if external is not None:
            ours = {str(pid) for pid in self.pool.pids()}
            others = tuple(
                obs.ExternalConsumer(
                    c.connection_name, c.prefetch, c.ack_required, c.unacked, c.channel, c.delivered, c.acked
                )
                for c in external
                if not _is_ours(c.connection_name, ours)
            )
        self.inbox.put(obs.QueueSample(ts, ready, consumers, unacked, others))

    def broker_status(self, ts: float, state: str, attempt: int, message: str) -> None:
        self.inbox.put(obs.BrokerStatus(ts, state, attempt, message))

    def queue_purged(self, ts: float, count: int) -> None:
        self.inbox.put(obs.Purged(ts, count))

    def task_published(self, ts: float, msg_id: str, body: str) -> None:
        self.inbox.put(obs.Published(msg_id, ts, body))

    def task_confirmed(self, ts: float, msg_id: str) -> None:
        self.inbox.put(obs.Confirmed(msg_id, ts))

    def task_failed(self, ts: float, msg_id: str, message: str) -> None:
        self.inbox.put(obs.PublishFailed(msg_id, ts, message))

    def task_republished(self, ts: float, msg_id: str, reason: str) -> None:
        self.inbox.put(obs.Republished(msg_id, ts, reason))

    def publisher_blocked(self, ts: float, reason: str) -> None:
        self.inbox.put(obs.PublisherBlocked(ts, reason))

    def publisher_unblocked(self, ts: float) -> None:
        self.inbox.put(obs.PublisherUnblocked(ts))

    # ----- requests from the app (UI thread; all non-blocking)

    def publish(self, bodies: list[str]) -> None:
        self.publisher.submit(bodies)

    def set_mode(self, mode: DispatchMode) -> None:
        self.inbox.put(obs.ModeRequested(time.time(), mode.prefetch, mode.ack))
        self.pool.set_mode(mode)

    def purge(self) -> None:
        self.monitor.purge()


def _is_ours(connection_name: str, pids: set[str]) -> bool:
    match = _OUR_CONNECTION.match(connection_name)
    return bool(match and match["pid"] in pids) or connection_name.startswith("dispatch-lab monitor")


class FeedBackend:
    """Stands in for the backend with an inbox alone: what is put in it gets folded, nothing is started.

    For benchmarks and tests that feed the dashboard recorded or made-up arrivals.
    """

    def __init__(self) -> None:
        self.inbox = Inbox()

    def start(self) -> None:
        pass

    def shutdown(self) -> None:
        pass
