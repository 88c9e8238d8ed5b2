"""Provides the facts the pool, the broker monitor and the publisher report to the model.

Worker processes speak ``workers.protocol`` events; everything else the model
learns arrives as one of these. All are plain, immutable and Textual-free, so a
session can be recorded and replayed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workers import protocol


@dataclass(frozen=True, slots=True)
class WorkerSpawned:
    """The pool started a worker process."""

    worker: str
    ts: float
    pid: int


@dataclass(frozen=True, slots=True)
class WorkerExited:
    """A worker process ended; ``code`` is negative for a signal (-9 = SIGKILL)."""

    worker: str
    ts: float
    code: int


@dataclass(frozen=True, slots=True)
class WorkerStderr:
    """A line the worker wrote on stderr (start-up failures, warnings)."""

    worker: str
    ts: float
    line: str


@dataclass(frozen=True, slots=True)
class WorkerGarbage:
    """A stdout line that was not a protocol event; counted, never fatal."""

    worker: str
    ts: float
    line: str


@dataclass(frozen=True, slots=True)
class RemoteWorkerHeard:
    """A worker this dashboard does not run reported through the broker's events exchange (``worker --report``).

    Said once per name and process, before its first events: its card is marked remote.
    """

    worker: str
    ts: float
    host: str
    pid: int
    control: bool = False
    """It obeys commands on the control exchange (``--accept-control``; added later, older logs mean no)."""


@dataclass(frozen=True, slots=True)
class StopRequested:
    """The user asked a worker to stop (gracefully or by a kill)."""

    worker: str
    ts: float
    kill: bool


@dataclass(frozen=True, slots=True)
class Published:
    """The publisher is about to send a task (recorded before it can be delivered)."""

    msg_id: str
    ts: float
    body: str


@dataclass(frozen=True, slots=True)
class Confirmed:
    """The broker confirmed a published task."""

    msg_id: str
    ts: float


@dataclass(frozen=True, slots=True)
class PublishFailed:
    """A publish was refused or lost with the connection; ``message`` is one sentence."""

    msg_id: str
    ts: float
    message: str


@dataclass(frozen=True, slots=True)
class Republished:
    """The publisher sends a task again under its id: the connection went before the broker confirmed it.

    The first try may have reached the broker, which then holds two copies; ``reason`` says how it ended.
    """

    msg_id: str
    ts: float
    reason: str


@dataclass(frozen=True, slots=True)
class PublisherBlocked:
    """The broker blocks the publisher's connection (a memory or disk alarm): publishes wait; ``reason`` is its text."""

    ts: float
    reason: str


@dataclass(frozen=True, slots=True)
class PublisherUnblocked:
    """The publisher's connection is blocked no more: the alarm cleared, or the connection went."""

    ts: float


@dataclass(frozen=True, slots=True)
class ExternalConsumer:
    """A consumer on our queue that this app did not start (from the management API)."""

    connection: str
    prefetch: int
    ack_required: bool
    unacked: int
    channel: str = ""
    """The broker's name for the consumer's channel; the counts below are per channel."""
    delivered: int | None = None
    """Deliveries (and gets) on that channel so far, from its message_stats (None before the first)."""
    acked: int | None = None
    """Acks on that channel so far, from its message_stats."""


@dataclass(frozen=True, slots=True)
class QueueSample:
    """The broker's own figures for the queue.

    ``ready`` and ``consumers`` come from a passive declare; ``unacked`` from the
    management API when it answers (about 5 s old), else None.
    """

    ts: float
    ready: int
    consumers: int
    unacked: int | None = None
    external: tuple[ExternalConsumer, ...] | None = None


@dataclass(frozen=True, slots=True)
class ManagementChecked:
    """Whether the management API describes the broker the AMQP link reached.

    ``refusal`` is empty when it does, else the sentence saying why its figures are ignored.
    """

    ts: float
    api: str
    refusal: str = ""


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    """The dashboard's own link to the broker: ``connected``, ``lost`` or ``reconnecting``."""

    ts: float
    state: str
    attempt: int = 0
    message: str = ""


@dataclass(frozen=True, slots=True)
class Purged:
    """The user purged the queue; the broker removed ``count`` ready messages."""

    ts: float
    count: int


@dataclass(frozen=True, slots=True)
class ModeRequested:
    """The user set a new dispatch mode for all workers."""

    ts: float
    prefetch: int
    ack: str
    names: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class BrokerRestarted:
    """The app restarted its private broker; ``kept`` says the queue and messages were durable."""

    ts: float
    kept: bool
    seconds: float
    durable: bool | None = None
    """The queue was durable (so what was lost, if anything, was non-persistent messages); None in older logs."""


@dataclass(frozen=True, slots=True)
class FailModeRequested:
    """The user set what every worker does with a failing task (``requeue``, ``reject``, ``crash``)."""

    ts: float
    on_fail: str


@dataclass(frozen=True, slots=True)
class DeadLetterSeen:
    """One message read in the dead-letter queue (workers.dead_letters.DeadLetter, without its body's bytes)."""

    msg_id: str | None
    reason: str
    times: int
    body: str


@dataclass(frozen=True, slots=True)
class DeadLettersSampled:
    """The dead-letter queue as the broker has it: ``count`` ready (passive declare), the first of them read."""

    ts: float
    queue: str
    count: int
    letters: tuple[DeadLetterSeen, ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLettersMoved:
    """The dead letters with these ids went back to the work queue; ``error`` says why not, if they did not."""

    ts: float
    queue: str
    ids: tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """The first line of a session log: what was being run (no credentials).

    The keys after ``broker`` came later (issue 15): older logs read with their defaults.
    """

    ts: float
    queue: str
    prefix: str
    prefetch: int
    ack: str
    durable: bool
    broker: str
    on_fail: str = "requeue"
    queue_type: str = "classic"
    delivery_limit: int | None = None
    dead_letter: bool = False
    broker_version: str = ""
    """As the broker announced it (server properties), or "" when not known."""
    ack_timeout: float | None = None
    """The broker's consumer_timeout in seconds, when the dashboard knows it (it set it, or was told)."""
    ack_timeout_source: str = ""


@dataclass(frozen=True, slots=True)
class RunStarted:
    """A preset or scenario began publishing as a run: the publisher's tasks ``first_seq`` to ``first_seq + tasks - 1``.

    The model numbers runs from 1 and the run's tasks from 1 within it; ``prefetch`` and
    ``ack`` are the mode asked for when it began.
    """

    ts: float
    name: str
    first_seq: int
    tasks: int
    prefetch: int
    ack: str


Observation = (
    protocol.Event
    | WorkerSpawned
    | WorkerExited
    | WorkerStderr
    | WorkerGarbage
    | StopRequested
    | RemoteWorkerHeard
    | Published
    | Confirmed
    | PublishFailed
    | Republished
    | PublisherBlocked
    | PublisherUnblocked
    | QueueSample
    | ManagementChecked
    | BrokerStatus
    | Purged
    | ModeRequested
    | SessionStarted
    | BrokerRestarted
    | RunStarted
    | FailModeRequested
    | DeadLettersSampled
    | DeadLettersMoved
)
