"""Provides recorded dashboard sessions: event lists with explicit timestamps, for replay tests.

A ``Recorder`` writes down what the pool, the publisher and the broker monitor
would put in the inbox, in the order the model would fold it, with the clock
moved only by ``at``/``after``. Each ``session_*`` function returns one such
recording; ``marks`` name the points where a test looks at the model mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tui.model import observations as obs
from tui.model.state import Model
from workers import protocol
from workers.settings import DispatchMode

T0 = 1_700_000_000.0
"""The start of every recording (a fixed epoch second, so replays never depend on today)."""

PREFIX = "ab12"
"""The publisher's session prefix: ``ab12-3`` is our task #3."""

SETTLE = 8.0
"""Seconds of quiet before a recording's final sample: the management API's figures trail
the queue by about 5 s, so a balance is only judged once nothing has moved for that long."""

TUTORIAL = ("First message.", "Second message..", "Third message...", "Fourth message....", "Fifth message.....")
ODD_HEAVY = ("Heavy task.....", "Light task.", "Heavy task.....", "Light task.")


def msg_id(seq: int) -> str:
    return f"{PREFIX}-{seq}"


@dataclass
class Recording:
    """A recorded session and the named points in it (an index into ``events``)."""

    events: list[obs.Observation]
    marks: dict[str, int] = field(default_factory=dict)

    def until(self, mark: str) -> list[obs.Observation]:
        return self.events[: self.marks[mark]]

    def ts(self, mark: str) -> float:
        """The timestamp of the last event before ``mark``."""
        return _ts(self.events[self.marks[mark] - 1])

    @property
    def end(self) -> float:
        return _ts(self.events[-1])


def _ts(item: obs.Observation) -> float:
    return float(getattr(item, "ts", T0))


def replay(events: list[obs.Observation], *, mode: DispatchMode | None = None, ledger_cap: int | None = None) -> Model:
    """A fresh model that knows our publisher's prefix, with ``events`` folded in."""
    model = Model(mode=mode, prefix=PREFIX, ledger_cap=ledger_cap)
    model.apply_all(events)
    return model


class Recorder:
    """Writes a session down event by event; every event carries the recorder's current time."""

    def __init__(self, t0: float = T0) -> None:
        self.now = t0
        self.events: list[obs.Observation] = []
        self.marks: dict[str, int] = {}
        self.bodies: dict[int, str] = {}
        self._published = 0
        self._next_tag: dict[str, int] = {}
        self._tags: dict[tuple[str, int], int] = {}
        self._acks: dict[str, str] = {}

    def recording(self) -> Recording:
        return Recording(list(self.events), dict(self.marks))

    # ----- the clock and the marks

    def at(self, ts: float) -> Recorder:
        assert ts >= self.now, "a recording never goes back in time"
        self.now = ts
        return self

    def after(self, seconds: float) -> Recorder:
        return self.at(self.now + seconds)

    def mark(self, name: str) -> None:
        self.marks[name] = len(self.events)

    def add(self, *items: obs.Observation) -> None:
        self.events.extend(items)

    # ----- the broker monitor

    def connected(self) -> None:
        self.add(obs.BrokerStatus(self.now, "connected"))

    def broker(self, state: str, attempt: int = 0) -> None:
        self.add(obs.BrokerStatus(self.now, state, attempt))

    def sample(self, ready: int, consumers: int, unacked: int | None = None) -> None:
        self.add(obs.QueueSample(self.now, ready, consumers, unacked))

    # ----- the publisher

    def publish(self, *bodies: str) -> list[int]:
        """Our publisher sends these tasks (each recorded, then confirmed); returns their numbers."""
        seqs = []
        for body in bodies:
            self._published += 1
            seq = self._published
            self.bodies[seq] = body
            self.add(obs.Published(msg_id(seq), self.now, body), obs.Confirmed(msg_id(seq), self.now))
            seqs.append(seq)
        return seqs

    # ----- the pool and the workers

    def spawn(self, worker: str, pid: int, prefetch: int, ack: str = "manual") -> None:
        self._acks[worker] = ack
        self.add(
            obs.WorkerSpawned(worker, self.now, pid),
            protocol.Ready(worker, self.now, pid, "task_queue", prefetch, ack),
        )

    def receive(self, worker: str, *seqs: int, redelivered: bool = False) -> None:
        for seq in seqs:
            tag = self._next_tag.get(worker, 0) + 1
            self._next_tag[worker] = tag
            self._tags[worker, seq] = tag
            body = self.bodies[seq]
            self.add(protocol.Received(worker, self.now, tag, msg_id(seq), body, redelivered))

    def start(self, worker: str, seq: int) -> float:
        """Work on ``seq`` begins; it takes one second per dot. Returns those seconds."""
        seconds = float(self.bodies[seq].count("."))
        self.add(protocol.Started(worker, self.now, self._tags[worker, seq], msg_id(seq), seconds))
        return seconds

    def done(self, worker: str, seq: int, *, acked: bool = True) -> None:
        self.add(protocol.Done(worker, self.now, self._tags[worker, seq], msg_id(seq), acked))

    def give_back(self, worker: str, seq: int, reason: str) -> None:
        self.add(protocol.Returned(worker, self.now, self._tags[worker, seq], msg_id(seq), reason))

    def mode(self, worker: str, prefetch: int, ack: str) -> None:
        self._acks[worker] = ack
        self.add(protocol.Mode(worker, self.now, prefetch, ack))

    def kill(self, worker: str) -> None:
        """F3: the pool records the request, sends SIGKILL and later reaps code -9."""
        self.add(obs.StopRequested(worker, self.now, kill=True), obs.WorkerExited(worker, self.now, -9))

    def stop(self, worker: str) -> None:
        """F4 after the worker gave back its waiting tasks and finished its current one."""
        self.add(
            obs.StopRequested(worker, self.now, kill=False),
            protocol.Stopped(worker, self.now, "stop"),
            obs.WorkerExited(worker, self.now, 0),
        )


# ----- the sessions


def session_round_robin() -> Recording:
    """Tutorial 2 at prefetch 0: five tasks, w1 gets 1, 3, 5 and w2 gets 2, 4; each runs to the end."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 4101, prefetch=0)
    r.spawn("w2", 4102, prefetch=0)
    r.after(0.5)
    r.sample(ready=0, consumers=2)
    r.after(0.5)
    r.publish(*TUTORIAL)
    # Unlimited prefetch: the broker pushes everything at once, alternating.
    r.receive("w1", 1)
    r.receive("w2", 2)
    r.receive("w1", 3)
    r.receive("w2", 4)
    r.receive("w1", 5)
    r.start("w1", 1)  # 1 s: ends at +1
    r.start("w2", 2)  # 2 s: ends at +2
    r.mark("all delivered")
    r.after(1)
    r.done("w1", 1)
    r.start("w1", 3)  # 3 s: ends at +4
    r.after(1)
    r.done("w2", 2)
    r.start("w2", 4)  # 4 s: ends at +6
    r.mark("two done")
    r.after(2)
    r.done("w1", 3)
    r.start("w1", 5)  # 5 s: ends at +9
    r.after(2)
    r.done("w2", 4)
    r.mark("w2 finished")
    r.after(3)
    r.done("w1", 5)
    r.after(SETTLE)
    r.sample(ready=0, consumers=2, unacked=0)
    r.mark("quiet")
    return r.recording()


def session_fair() -> Recording:
    """odd-heavy at prefetch 1: each worker holds one task; the light worker takes the next heavy one."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 4201, prefetch=1)
    r.spawn("w2", 4202, prefetch=1)
    r.after(1)
    r.publish(*ODD_HEAVY)
    r.receive("w1", 1)
    r.receive("w2", 2)
    r.start("w1", 1)  # heavy: 5 s, ends at +5
    r.start("w2", 2)  # light: 1 s
    r.sample(ready=2, consumers=2, unacked=None)
    r.mark("window full")
    r.after(1)
    r.done("w2", 2)
    r.receive("w2", 3)  # nothing new until the ack: now w2 may take #3
    r.start("w2", 3)  # heavy: 5 s, ends at +6
    r.after(4)
    r.done("w1", 1)
    r.receive("w1", 4)
    r.start("w1", 4)  # light: 1 s, ends at +6
    r.after(1)
    r.done("w1", 4)
    r.done("w2", 3)
    r.after(SETTLE)
    r.sample(ready=0, consumers=2, unacked=0)
    r.mark("quiet")
    return r.recording()


def session_kill(*, exit_after_redelivery: bool = False) -> Recording:
    """Manual ack, prefetch 0: w1 holds #1 (working) and #3 (waiting), is killed; w2 gets both again.

    With ``exit_after_redelivery`` the pool reaps w1 only after w2 has reported the
    redeliveries: each worker's events come on their own pipe, and the broker
    requeues faster than the pool notices the exit, so either order happens.
    """
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 4301, prefetch=0)
    r.spawn("w2", 4302, prefetch=0)
    r.after(1)
    r.publish(*TUTORIAL[:4])
    r.receive("w1", 1)
    r.receive("w2", 2)
    r.receive("w1", 3)
    r.receive("w2", 4)
    r.start("w1", 1)
    r.start("w2", 2)
    r.mark("before kill")
    r.after(0.5)
    if exit_after_redelivery:
        r.add(obs.StopRequested("w1", r.now, kill=True))
        r.after(0.01)
        r.receive("w2", 1, 3, redelivered=True)
        r.after(0.01)
        r.add(obs.WorkerExited("w1", r.now, -9))
    else:
        r.kill("w1")
        r.mark("killed")
        r.after(0.01)
        r.sample(ready=2, consumers=1, unacked=None)
        r.mark("requeued")
        r.receive("w2", 1, 3, redelivered=True)
    r.mark("redelivered")
    r.after(1.5)
    r.done("w2", 2)  # at +2
    r.start("w2", 4)
    r.after(4)
    r.done("w2", 4)  # at +6
    r.start("w2", 1)
    r.after(1)
    r.done("w2", 1)  # at +7
    r.start("w2", 3)
    r.after(3)
    r.done("w2", 3)  # at +10
    r.after(SETTLE)
    r.sample(ready=0, consumers=1, unacked=0)
    r.mark("quiet")
    return r.recording()


def session_auto_ack_loss() -> Recording:
    """Auto ack: w1 holds #1, #3 and #5 (the broker already forgot them) and is killed."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 4401, prefetch=0, ack="auto")
    r.spawn("w2", 4402, prefetch=0, ack="auto")
    r.after(1)
    r.publish(*TUTORIAL)
    r.receive("w1", 1)
    r.receive("w2", 2)
    r.receive("w1", 3)
    r.receive("w2", 4)
    r.receive("w1", 5)
    r.start("w1", 1)
    r.start("w2", 2)
    r.mark("all delivered")
    r.after(0.5)
    r.kill("w1")
    r.mark("killed")
    r.after(1.5)
    r.done("w2", 2)
    r.start("w2", 4)
    r.after(4)
    r.done("w2", 4)
    r.after(SETTLE)
    r.sample(ready=0, consumers=1, unacked=0)
    r.mark("quiet")
    return r.recording()


def session_mode_change() -> Recording:
    """Prefetch 0 -> 1 live: each worker gives back its waiting tasks, which return redelivered."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 4501, prefetch=0)
    r.spawn("w2", 4502, prefetch=0)
    r.after(1)
    r.publish(*TUTORIAL)
    r.receive("w1", 1)
    r.receive("w2", 2)
    r.receive("w1", 3)
    r.receive("w2", 4)
    r.receive("w1", 5)
    r.start("w1", 1)
    r.start("w2", 2)
    r.after(0.3)
    r.add(obs.ModeRequested(r.now, 1, "manual"))
    r.after(0.01)
    # cancel -> qos -> consume between tasks: the waiting ones go back, the current ones go on.
    r.give_back("w1", 3, "mode-change")
    r.give_back("w1", 5, "mode-change")
    r.mode("w1", 1, "manual")
    r.give_back("w2", 4, "mode-change")
    r.mode("w2", 1, "manual")
    r.after(0.01)
    r.sample(ready=3, consumers=2)
    r.mark("returned")
    r.at(T0 + 2)
    r.done("w1", 1)
    r.receive("w1", 3, redelivered=True)
    r.start("w1", 3)  # 3 s: ends at +5
    r.at(T0 + 3)
    r.done("w2", 2)
    r.receive("w2", 4, redelivered=True)
    r.start("w2", 4)  # 4 s: ends at +7
    r.at(T0 + 5)
    r.done("w1", 3)
    r.receive("w1", 5, redelivered=True)
    r.start("w1", 5)  # 5 s: ends at +10
    r.at(T0 + 7)
    r.done("w2", 4)
    r.at(T0 + 10)
    r.done("w1", 5)
    r.after(SETTLE)
    r.sample(ready=0, consumers=2, unacked=0)
    r.mark("quiet")
    return r.recording()


def session_forgotten_ack() -> Recording:
    """Ack none (the tutorial's forgotten ack): w1 does three tasks and never acks; it stops; w2 redoes them."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 4601, prefetch=0, ack="none")
    r.after(1)
    r.publish("a.", "b.", "c.")
    r.receive("w1", 1, 2, 3)
    for seq in (1, 2, 3):
        r.start("w1", seq)
        r.after(1)
        r.done("w1", seq, acked=False)
        r.mark(f"done {seq}")
    r.after(SETTLE)
    r.sample(ready=0, consumers=1, unacked=3)
    r.mark("all done, none acked")
    r.after(1)
    r.stop("w1")
    r.after(0.01)
    r.sample(ready=3, consumers=0, unacked=3)  # the management API lags about 5 s
    r.mark("stopped")
    r.after(1)
    r.spawn("w2", 4602, prefetch=0, ack="manual")
    r.receive("w2", 1, 2, 3, redelivered=True)
    for seq in (1, 2, 3):
        r.start("w2", seq)
        r.after(1)
        r.done("w2", seq)
    r.after(SETTLE)
    r.sample(ready=0, consumers=1, unacked=0)
    r.mark("quiet")
    return r.recording()


def session_duplicate() -> Recording:
    """w1 reports #1 done, then dies before its ack reaches the broker: #1 is redelivered and done twice."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 4701, prefetch=1)
    r.spawn("w2", 4702, prefetch=1)
    r.after(1)
    r.publish("only task.")
    r.receive("w1", 1)
    r.start("w1", 1)
    r.after(1)
    r.done("w1", 1)  # reported before the ack leaves; the kill lands in between
    r.kill("w1")
    r.after(0.01)
    r.sample(ready=1, consumers=1, unacked=0)
    r.mark("killed")
    r.receive("w2", 1, redelivered=True)
    r.start("w2", 1)
    r.after(1)
    r.done("w2", 1)
    r.after(SETTLE)
    r.sample(ready=0, consumers=1, unacked=0)
    r.mark("quiet")
    return r.recording()


def session_snapshot() -> Recording:
    """Mid-run for the snapshot: w1 killed, w2 busy with a redelivered task waiting, w3 idle."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 5101, prefetch=0)
    r.spawn("w2", 5102, prefetch=0)
    r.spawn("w3", 5103, prefetch=0)
    r.after(1)
    r.publish(*TUTORIAL)
    r.publish("Hello.")
    r.receive("w1", 1)
    r.receive("w2", 2)
    r.receive("w3", 3)
    r.receive("w1", 4)
    r.receive("w2", 5)
    r.receive("w3", 6)
    r.start("w1", 1)  # 1 s
    r.start("w2", 2)  # 2 s
    r.start("w3", 3)  # 3 s
    r.at(T0 + 2)
    r.done("w1", 1)
    r.start("w1", 4)
    r.at(T0 + 3)
    r.done("w2", 2)
    r.start("w2", 5)  # 5 s: ends at +8
    r.at(T0 + 3.5)
    r.kill("w1")  # one second into #4
    r.after(0.01)
    r.receive("w2", 4, redelivered=True)  # waits behind #5
    r.at(T0 + 4)
    r.done("w3", 3)
    r.start("w3", 6)  # 1 s
    r.at(T0 + 5)
    r.done("w3", 6)
    r.at(T0 + 5.4)
    r.sample(ready=0, consumers=2, unacked=3)  # the management API is about 5 s behind
    return r.recording()


SNAPSHOT_NOW = T0 + 5.5
"""The snapshot's fixed clock: w2 is 2.5 s into the 5 s #5, with the redelivered #4 waiting."""
