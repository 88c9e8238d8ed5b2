"""Provides OtherConsumers: what the consumers this dashboard does not run are doing on its queue.

The tutorial's ``worker.py`` in another terminal, or a second dashboard, takes
tasks our workers never see. Two sources tell about them: the passive declare's
consumer count (more consumers than our live workers: others are attached) and,
when it answers for this broker, the management API's channel figures (each
other consumer's channel: deliveries, acks, unacked; about 5 s behind). Pure and
Textual-free: the model feeds it samples and asks it questions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tui.model import observations as obs

ATTACHED_FOR = 0.6
"""Seconds the passive declare must count more consumers than our live workers before others count as attached.

A worker killed a moment ago, or one starting, can leave the count one off for a sample or two."""
STATS_AFTER = 7.0
"""Seconds a new channel may go without message stats before they count as not collected (emitted every 5 s)."""


@dataclass(slots=True)
class ChannelCounts:
    """One other consumer's channel as the management API counted it."""

    first_seen: float
    base_delivered: int | None
    """Deliveries it had had when we first saw its figures: taken before we came (None: none reported yet)."""
    base_acked: int
    delivered: int | None = None
    acked: int | None = None
    unacked: int = 0
    listed: bool = True
    """Still in the API's latest list (a closed channel keeps its last counts: what it took stays taken)."""


@dataclass(slots=True)
class OtherConsumers:
    """Other consumers on the queue: whether some are attached, and what the management API says they took."""

    channels: dict[str, ChannelCounts] = field(default_factory=dict)
    management: bool = False
    """True once a sample carried the API's consumer list (it answers, for this broker)."""
    seen_at: float | None = None
    """When others were last known to be attached (by the passive declare or the API)."""
    changed_at: float | None = None
    """When the API's figures for them last changed: until they settle, a balance waits."""
    surplus: int = 0
    """Consumers the passive declare counts beyond our live workers, once that has lasted ATTACHED_FOR."""
    surplus_since: float | None = None
    queue_unacked: int | None = None
    """The queue's unacked in the API's latest answer (it counts theirs and ours)."""

    # ----- folding

    def declared(self, ts: float, consumers: int, ours: int) -> None:
        """A passive declare counted ``consumers``; ``ours`` of our workers are alive (each may consume)."""
        surplus = consumers - ours
        if surplus <= 0:
            self.surplus_since, self.surplus = None, 0
            return
        if self.surplus_since is None:
            self.surplus_since = ts
        if ts - self.surplus_since >= ATTACHED_FOR:
            self.surplus = surplus
            self.seen_at = ts

    def listed(self, ts: float, external: Iterable[obs.ExternalConsumer], queue_unacked: int | None) -> None:
        """The management API's list of consumers that are not ours, and the queue's unacked (both ~5 s old)."""
        first = not self.management
        self.management = True
        channels = self.channels
        before = self._figures()
        self.queue_unacked = queue_unacked
        present: set[str] = set()
        for consumer in external:
            key = consumer.channel or consumer.connection
            if key in present:
                continue  # two consumers on one channel: the counts are the channel's, counted once
            present.add(key)
            counts = channels.get(key)
            if counts is None:
                # Seen at our first look: what it took before we came is not ours to count.
                base = consumer.delivered if first else 0
                counts = channels[key] = ChannelCounts(ts, base, (consumer.acked or 0) if first else 0)
            elif counts.base_delivered is None and consumer.delivered is not None:
                counts.base_delivered = 0  # its first stats: a channel that new took nothing before we came
            counts.delivered, counts.acked = consumer.delivered, consumer.acked
            counts.unacked, counts.listed = consumer.unacked, True
        for key, counts in channels.items():
            if key not in present:
                counts.listed, counts.unacked = False, 0
        if present:
            self.seen_at = ts
        if self._figures() != before:
            self.changed_at = ts

    def _figures(self) -> tuple[int, int, int, int, int | None]:
        # The queue's unacked too: it and their channels' figures are collected apart and may land a poll apart.
        listed = sum(1 for c in self.channels.values() if c.listed)
        return self.took, self.acked, self.unacked, listed, self.queue_unacked

    # ----- figures

    @property
    def took(self) -> int:
        """Deliveries to other consumers since we came, by the API's channel stats."""
        return sum(
            max(0, c.delivered - (c.base_delivered or 0)) for c in self.channels.values() if c.delivered is not None
        )

    @property
    def acked(self) -> int:
        """Acks by other consumers since we came, by the API's channel stats."""
        return sum(max(0, c.acked - c.base_acked) for c in self.channels.values() if c.acked is not None)

    @property
    def unacked(self) -> int:
        """What other consumers hold unacked now, by the API (part of the queue's unacked figure)."""
        return sum(c.unacked for c in self.channels.values() if c.listed)

    @property
    def attached(self) -> int:
        """Other consumers attached now, as far as we can tell (the API's list, else the declare's surplus)."""
        listed = sum(1 for c in self.channels.values() if c.listed)
        return max(listed, self.surplus)

    def seen_since(self, ts: float) -> bool:
        """Others were attached at or after ``ts``."""
        return self.seen_at is not None and self.seen_at >= ts

    def settling(self, now: float, lag: float) -> bool:
        """Others were seen and the API's figures changed less than ``lag`` seconds ago: the rest may lag."""
        return bool(self.channels) and self.changed_at is not None and now - self.changed_at < lag

    def take_cap(self, now: float, inferred: int) -> int | None:
        """How many more tasks the API's counts allow us to infer taken by others; None when they cannot say.

        ``inferred`` is how many we inferred so far. None without the API, or when
        it collects no message stats; 0 while a new channel's first stats are due:
        then the inference waits for them.
        """
        if not self.management:
            return None
        counted = [c for c in self.channels.values() if c.delivered is not None]
        pending = [c for c in self.channels.values() if c.delivered is None and now - c.first_seen < STATS_AFTER]
        if pending:
            return 0
        if not counted:
            return None  # no stats after STATS_AFTER: the broker does not collect them
        return max(0, self.took - inferred)
