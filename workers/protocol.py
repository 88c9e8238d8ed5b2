"""Provides the worker event protocol (JSON lines, version 1) and the stdin commands.

Stdlib only. Every event line carries ``v``, ``event``, ``worker`` and ``ts``;
the keys of each kind are listed in docs/architecture.md and may grow but never be renamed.
``decode`` never raises: a line that is not a valid event gives ``None``.
Workers asked for the compact form write the received, started and done events
as the items of ``tasks`` lines (``encode_tasks``); ``decode_all`` and
``decode_lines`` read both forms.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

_T = TypeVar("_T")

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform

    @dataclass_transform(frozen_default=True)
    def event(cls: type[_T]) -> type[_T]:
        """An event class: frozen for the type checker, which keeps every event immutable."""
        ...

else:

    def event(cls):
        # Not frozen at run time: a frozen dataclass sets each field through object.__setattr__,
        # measured at 1.5 µs per event against 0.35 µs, and the dashboard makes 150,000 events a
        # second in a flood. The type checker still refuses any assignment to a field.
        return dataclass(slots=True)(cls)


VERSION = 1
BODY_CAP = 200
"""Characters of a task body carried in a ``received`` event."""


@event
class Ready:
    """The worker is connected, its queue declared and its consumer registered."""

    worker: str
    ts: float
    pid: int
    queue: str
    prefetch: int
    ack: str
    on_fail: str = "requeue"
    """What the worker does with a failing task (added later: older lines mean the default)."""


@event
class Received:
    """A delivery reached the worker process (work on it may not have begun).

    ``delivery_count`` (added later; absent, None, on a classic queue) is the broker's
    ``x-delivery-count`` header: a quorum queue's count of earlier deliveries of the
    message, written only when the header came (measured on 3.10.8: a consumer's first
    delivery has none, basic.get's says 0; then 1, 2, ...).
    """

    worker: str
    ts: float
    tag: int
    msg_id: str | None
    body: str
    redelivered: bool
    delivery_count: int | None = None


@event
class Started:
    """Work on a delivery begins; ``seconds`` is how long it is expected to take."""

    worker: str
    ts: float
    tag: int
    msg_id: str | None
    seconds: float


@event
class Done:
    """Work on a delivery finished; ``acked`` says an ack follows (or auto ack took it)."""

    worker: str
    ts: float
    tag: int
    msg_id: str | None
    acked: bool


@event
class Returned:
    """A delivery the worker held and gave back unworked (nack with requeue).

    ``reason`` is ``mode-change``, ``stop`` or ``connection-lost``; or ``ack-timeout``
    or ``channel-closed`` when the broker closed the channel and took the delivery
    back itself (the one in progress too: its late finish is an ``ack_lost``).
    """

    worker: str
    ts: float
    tag: int
    msg_id: str | None
    reason: str


@event
class Mode:
    """A live mode change took effect."""

    worker: str
    ts: float
    prefetch: int
    ack: str


@event
class Connection:
    """The worker's link to the broker changed: ``lost``, ``reconnecting`` or ``restored``.

    ``reason`` (added later, so it may be missing: then "") is why a ``lost`` link
    was lost, as the broker said it, e.g. an operator's ``rabbitmqctl close_connection``
    text: ``CONNECTION_FORCED - <their reason>``.
    """

    worker: str
    ts: float
    state: str
    attempt: int
    reason: str = ""


@event
class Cancelled:
    """The broker cancelled the worker's consumer (basic.cancel): it sends that when the queue goes.

    ``reason`` is ``queue-deleted`` when the queue was missing as the worker looked
    at once, or ``unknown`` when it was there (already declared again by another
    consumer, or cancelled for another reason). The deliveries the worker held stay
    unacked on its channel and it still works them; their acks are accepted and go
    nowhere, as the queue's messages went with it. A ``ready`` follows once the
    worker has declared the queue again and consumes from it.
    """

    worker: str
    ts: float
    reason: str


@event
class ChannelClosed:
    """The broker closed the worker's channel (its connection lives on): ``code`` and ``reason`` as sent.

    RabbitMQ does this when the oldest delivery stays unacked past its
    ``consumer_timeout`` (406, ``PRECONDITION_FAILED - delivery acknowledgement on
    channel 1 timed out...``) and requeues every unacked delivery of that channel.
    The ``returned`` events of the deliveries the worker held follow; a ``ready``
    once a new channel consumes.
    """

    worker: str
    ts: float
    code: int
    reason: str


def taken_back_reason(code: int, text: str) -> str:
    """Why the broker took a channel's deliveries back: ``ack-timeout`` or else ``channel-closed``.

    RabbitMQ's consumer_timeout closes the channel with 406 and, in 3.x, the text
    ``PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. ...``.
    """
    return "ack-timeout" if code == 406 and "acknowledgement" in text and "timed out" in text else "channel-closed"


@event
class AckLost:
    """Work on a delivery finished, but no ack for it can reach the broker: its channel was closed.

    The broker had taken the delivery back (``reason`` is ``ack-timeout`` or
    ``channel-closed``, as in the ``returned`` of the same tag) and hands the message
    out again: the work happened, the broker never saw it done. Written in place of
    ``done``, so a reader that knows only ``done`` counts no finish the broker never got.
    """

    worker: str
    ts: float
    tag: int
    msg_id: str | None
    reason: str


@event
class Failed:
    """Work on a delivery failed (its body holds ``!`` and the worker reached it); written before the nack.

    ``action`` is what the worker does about it: ``requeue`` (basic.nack, requeue),
    ``reject`` (basic.reject, no requeue: dead-lettered if the queue has a target,
    else dropped), ``crash`` (the process exits with the delivery unacked), or
    ``none`` when it tells the broker nothing (auto ack: forgotten at delivery;
    no ack: it stays unacked until the worker goes).
    """

    worker: str
    ts: float
    tag: int
    msg_id: str | None
    action: str


FAIL_ACTIONS = ("requeue", "reject", "crash", "none")


@event
class OnFail:
    """A live change of the failure mode took effect (``requeue``, ``reject`` or ``crash``)."""

    worker: str
    ts: float
    on_fail: str


@event
class Alive:
    """Once a second from the connection's thread: the worker is not hung.

    ``heartbeat`` is the AMQP heartbeat timeout negotiated with the broker; a
    worker that stops answering (SIGSTOP) is dropped after about twice that.
    """

    worker: str
    ts: float
    heartbeat: int
    prefetch: int | None = None
    """The worker's mode and failure mode as they are now (added later: a dashboard that started after
    its ``ready`` learns them here; absent in older lines)."""
    ack: str | None = None
    on_fail: str | None = None


@event
class Error:
    """Something went wrong; ``message`` is one line with no secrets."""

    worker: str
    ts: float
    message: str


@event
class Stopped:
    """The worker is about to exit."""

    worker: str
    ts: float
    reason: str


@event
class Dropped:
    """A reporting worker (``--report``) dropped telemetry rather than slow its work: ``count`` events so far.

    Sent on the events exchange only: the work never waits for the broker to take a report.
    """

    worker: str
    ts: float
    count: int


Event = (
    Ready | Received | Started | Done | Returned | Mode | Connection | Alive | Error | Stopped
    | Cancelled | ChannelClosed | AckLost | Dropped
    | Cancelled | ChannelClosed | AckLost | Failed | OnFail
)  # fmt: skip

EVENT_NAMES: dict[type[Event], str] = {
    Ready: "ready",
    Received: "received",
    Started: "started",
    Done: "done",
    Returned: "returned",
    Mode: "mode",
    Connection: "connection",
    Alive: "alive",
    Error: "error",
    Stopped: "stopped",
    Cancelled: "cancelled",
    ChannelClosed: "channel_closed",
    AckLost: "ack_lost",
    Dropped: "dropped",
    Failed: "failed",
    OnFail: "on_fail",
}
_BY_NAME: dict[str, type[Event]] = {name: cls for cls, name in EVENT_NAMES.items()}
FIELDS: dict[type[Event], tuple[str, ...]] = {cls: tuple(f.name for f in fields(cls)) for cls in EVENT_NAMES}
"""Each kind's keys after ``v`` and ``event``, in their order on the wire."""

# The types each field must have on the wire; bool is checked before int since bool is an int.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "worker": (str,),
    "ts": (float, int),
    "pid": (int,),
    "queue": (str,),
    "prefetch": (int,),
    "ack": (str,),
    "tag": (int,),
    "msg_id": (str, type(None)),
    "body": (str,),
    "redelivered": (bool,),
    "seconds": (float, int),
    "acked": (bool,),
    "reason": (str,),
    "state": (str,),
    "attempt": (int,),
    "heartbeat": (int,),
    "message": (str,),
    "code": (int,),
    "count": (int,),
    "on_fail": (str,),
    "delivery_count": (int,),  # absent when unknown, never null
    "action": (str,),
}
_BOOL_FIELDS = frozenset({"redelivered", "acked"})


def encode(event: Event) -> str:
    """One JSON line (with the trailing newline) for an event."""
    data: dict[str, object] = {"v": VERSION, "event": EVENT_NAMES[type(event)]}
    for name in FIELDS[type(event)]:
        value = getattr(event, name)
        if value is None and name in _OPTIONAL:
            continue  # a key added later, written only when it says something
        data[name] = value
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n"


_OPTIONAL = frozenset({"delivery_count", "prefetch", "ack", "on_fail"})
"""Keys left out when None (a reader that predates them sees the event as before)."""


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not a number on the wire")


# json.loads builds a new JSONDecoder on every call that passes an option; the
# dashboard decodes every event of every worker, so keep one.
_json_decode = json.JSONDecoder(parse_constant=_no_constants).decode
_detect_encoding = json.detect_encoding
_FLOAT_FIELDS = frozenset({"ts", "seconds"})
# Per kind: the class and, for each field, the exact types json may give it and its
# default (MISSING for a key every line has; a key added later has one, so older lines
# still decode). json only ever makes exact dict/list/str/int/float/bool/None, so
# `type(v) in set` is the isinstance check above without its bool-is-an-int trap.
_SPECS: dict[str, tuple[type[Event], tuple[tuple[str, frozenset[type], bool, Any], ...]]] = {
    name: (
        cls,
        tuple((f.name, frozenset(_FIELD_TYPES[f.name]), f.name in _FLOAT_FIELDS, f.default) for f in fields(cls)),
    )
    for cls, name in EVENT_NAMES.items()
}


def _decode_json(line: str | bytes) -> Event | None:
    """The general decoder: any valid v1 event, in any key order or spacing."""
    try:
        if not isinstance(line, str):
            line = line.decode(_detect_encoding(line), "surrogatepass")  # what json.loads does
        data = _json_decode(line)
    except (ValueError, RecursionError):  # RecursionError: deeply nested junk like "[[[[..."
        return None
    if not isinstance(data, dict):
        return None
    version, kind = data.get("v"), data.get("event")
    if version != VERSION or isinstance(version, bool) or not isinstance(kind, str):
        return None  # true == 1 in Python; an unhashable kind would raise in the lookup
    spec = _SPECS.get(kind)
    if spec is None:
        return None
    cls, fields = spec
    values: list[Any] = []
    for name, types, to_float, default in fields:
        if name not in data:
            if default is MISSING:
                return None  # every listed key is present, even when null (msg_id)
            values.append(default)
            continue
        value: Any = data[name]
        kind_of = type(value)
        if kind_of not in types:
            return None
        if to_float and kind_of is int:
            value = float(value)
        values.append(value)
    return cls(*values)


# The fast path: the three lines a worker writes per task, exactly as the
# encode_* helpers below write them (strings without escapes, numbers of sane
# length). It gives the same event as _decode_json; anything else, or anything
# it is unsure of, goes to _decode_json. Measured: about half the cost per line.
_STR = r'"([^"\\\x00-\x1f]*)"'
_INT = r"(0|[1-9][0-9]{0,17})"
_NUM = r"((?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,20})?(?:[eE][+-]?[0-9]{1,3})?)"
_HOT = (
    r'\{"v":1,"event":"(?:(received)|(started)|done)",'
    rf'"worker":{_STR},"ts":{_NUM},"tag":{_INT},'
    r'"msg_id":(null|"[^"\\\x00-\x1f]*")'  # kept quoted: findall gives "" for a group that did not take part
    # Each kind with its own keys only (a conditional on the kind's group), so every match is an event.
    rf'(?(1),"body":{_STR},"redelivered":(true|false)|(?(2),"seconds":{_NUM}|,"acked":(true|false)))'
    r"\}"
)
_HOT_LINE = re.compile(_HOT + r"[ \t\n\r]*\Z")
_HOT_LINES = re.compile(rf"(?:{_HOT}|(.*))\n")
"""A block of lines, one match per line: a hot event's groups, or else the whole line in the last group."""
_HOT_SLOTS = (
    # A received line with a delivery_count (quorum queues) is left to _decode_json: the fast path
    # matches only lines without one, whose delivery_count is then None, its default.
    FIELDS[Received] == ("worker", "ts", "tag", "msg_id", "body", "redelivered", "delivery_count")
    and FIELDS[Started] == ("worker", "ts", "tag", "msg_id", "seconds")
    and FIELDS[Done] == ("worker", "ts", "tag", "msg_id", "acked")
)
"""False once a hot kind grows a field: the fast path then steps aside until it is updated."""


def _hot_event(
    received: str | None,
    started: str | None,
    worker: str,
    ts: str,
    tag: str,
    msg_id: str,
    body: str,
    redelivered: str,
    seconds: str,
    acked: str,
) -> Event:
    """The event of a fast-path match (``match.groups`` or a ``findall`` row, which has "" for None)."""
    msg = None if msg_id == "null" else msg_id[1:-1]
    if received:
        return Received(worker, float(ts), int(tag), msg, body, redelivered == "true")
    if started:
        return Started(worker, float(ts), int(tag), msg, float(seconds))
    return Done(worker, float(ts), int(tag), msg, acked == "true")


def decode(line: str | bytes) -> Event | None:
    """The event in one line, or None for anything that is not a valid v1 event."""
    try:
        match = _HOT_LINE.match(line if isinstance(line, str) else line.decode("utf-8"))
    except UnicodeDecodeError:
        match = None
    if match is None or not _HOT_SLOTS:
        return _decode_json(line)
    return _hot_event(*match.groups())


def decode_lines(data: bytes) -> tuple[list[Event | bytes], bool]:
    """The events in a block of lines, in order, and whether every line was one.

    Gives what ``decode`` gives line by line, with a line that is no event kept as
    its bytes and blank lines skipped, in one pass over the block instead of one
    per line: the dashboard decodes up to 150,000 lines a second.
    """
    if not data:
        return [], True
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    out: list[Event | bytes] = []
    clean = True
    if text is None or not _HOT_SLOTS:
        lines = data.split(b"\n")
        if not lines[-1]:
            lines.pop()
        for line in lines:
            clean &= _decode_into(out, line)
        return out, clean
    if not text.endswith("\n"):
        text += "\n"
    append = out.append
    # _hot_event inlined (measured: 6 % of a line's decoding): this loop runs for every line a worker writes.
    for received, started, worker, ts, tag, msg_id, body, redelivered, seconds, acked, other in _HOT_LINES.findall(
        text
    ):
        if not ts:  # every hot match has a timestamp, the other alternative none
            if other.startswith(_TASKS_PREFIX):
                events = _decode_tasks(other)
                if events is not None:
                    out += events
                    continue
            clean &= _decode_into(out, other.encode())
            continue
        msg = None if msg_id == "null" else msg_id[1:-1]
        if received:
            append(Received(worker, float(ts), int(tag), msg, body, redelivered == "true"))
        elif started:
            append(Started(worker, float(ts), int(tag), msg, float(seconds)))
        else:
            append(Done(worker, float(ts), int(tag), msg, acked == "true"))
    return out, clean


def _decode_into(out: list[Event | bytes], line: bytes) -> bool:
    """Append the line's events, or the line itself when it holds none and is not blank; True for events."""
    events = decode_all(line)
    if events is not None:
        out += events
        return True
    if line.strip():
        out.append(line)
    return False


def decode_all(line: str | bytes) -> list[Event] | None:
    """The events in one line: one for a v1 event line, several for a ``tasks`` line; None for anything else."""
    events = _decode_tasks(line)  # its prefix tells a tasks line at once: no line is parsed twice
    if events is not None:
        return events
    event = decode(line)
    return None if event is None else [event]


# The compact form: workers started with --compact-events write the received, started and
# done events of an I/O cycle as the items of one ``tasks`` line, in order (other kinds stay
# v1 lines between them). The dashboard asks for it: json decodes the items in C, about a
# third of what the regular expression above costs per event.
TASKS = "tasks"
TASKS_CAP = 200
"""Items in one ``tasks`` line at most: a line stays within tens of kilobytes."""
_TASKS_PREFIX = '{"v":1,"event":"tasks",'
_TASKS_PREFIX_BYTES = _TASKS_PREFIX.encode()
_encode_items = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode

TaskItem = tuple[Any, ...]
"""One item of a ``tasks`` line: its code and the event's fields after ``worker``, as below."""


def item_received(ts: float, tag: int, msg_id: str | None, body: str, redelivered: bool) -> TaskItem:
    return ("r", ts, tag, msg_id, body, redelivered)


def item_received_counted(
    ts: float, tag: int, msg_id: str | None, body: str, redelivered: bool, count: int
) -> TaskItem:
    """A received item with the broker's ``x-delivery-count`` (quorum queues): its own code, so "r" stays as it was."""
    return ("R", ts, tag, msg_id, body, redelivered, count)


def item_started(ts: float, tag: int, msg_id: str | None, seconds: float) -> TaskItem:
    return ("s", ts, tag, msg_id, float(seconds))


def item_done(ts: float, tag: int, msg_id: str | None, acked: bool) -> TaskItem:
    return ("d", ts, tag, msg_id, acked)


def item_worked(ts: float, tag: int, msg_id: str | None, body: str, redelivered: bool, acked: bool) -> TaskItem:
    """A task received, started (0 s) and done at ``ts``: the three events in one item."""
    return ("t", ts, tag, msg_id, body, redelivered, acked)


_ITEM_MARK = b'["'
"""How each item of a ``tasks`` line begins (encode_tasks), and nothing else in a v1 event line."""


def events_in(data: bytes) -> int:
    """About how many events a block of lines holds: one a line, one an item in ``tasks`` lines.

    A ``tasks`` line of 200 items is a hundred times the work of a v1 line: whoever
    weighs output by its lines would let one such line fill a whole slice. (A body
    holding ``["`` counts one more.)
    """
    return data.count(b"\n") + data.count(_ITEM_MARK)


def cut_after_events(data: bytes, count: int) -> int | None:
    """Where to cut a block of lines so the head holds about ``count`` events (events_in; at least one line).

    The byte offset just past a newline, or None when the whole block is within ``count``
    (or holds no complete line to cut after).
    """
    cut, weight = -1, 0
    while weight < count:
        start = cut + 1
        cut = data.find(b"\n", start)
        if cut < 0:
            return None
        weight += 1 + data.count(_ITEM_MARK, start, cut)
    return None if cut + 1 >= len(data) else cut + 1


def encode_tasks(worker_json: str, items: list[TaskItem]) -> str:
    """One ``tasks`` line (with its newline) holding ``items`` in order; ``ts`` is the first item's."""
    body = ",".join([_encode_item(item) for item in items])
    return f'{{"v":1,"event":"tasks","worker":{worker_json},"ts":{items[0][1]!r},"items":[{body}]}}\n'


_FINITE = (float("inf"), float("-inf"))


def _encode_item(item: TaskItem) -> str:
    """One item as JSON, the same text json gives: at prefetch 1 this is the worker's cost per task.

    json.JSONEncoder.encode builds its C encoder on every call (about 4 µs for a one-item line);
    an f-string with the C string escaper takes about 1. A task worked at once ("t") comes
    first, in one f-string: at prefetch 50 nearly every item is one.
    """
    code, ts, tag, msg_id = item[0], item[1], item[2], item[3]
    # ts - ts is 0.0 for every finite float, nan for nan and the infinities (which repr would not write as JSON).
    if type(ts) is not float or ts - ts != 0.0 or type(tag) is not int:
        return _encode_items(item)  # json's own words
    if code == "t":
        return (
            f'["t",{ts!r},{tag},{_json_text(msg_id)},{_encode_str(item[4])},'
            f"{'true' if item[5] else 'false'},{'true' if item[6] else 'false'}]"
        )
    head = f'["{code}",{ts!r},{tag},{_json_text(msg_id)},'
    if code == "d":
        return f"{head}{'true' if item[4] else 'false'}]"
    if code == "r":
        return f"{head}{_encode_str(item[4])},{'true' if item[5] else 'false'}]"
    seconds = item[4]
    if code == "s" and type(seconds) is float and seconds == seconds and seconds not in _FINITE:
        return f"{head}{seconds!r}]"
    return _encode_items(item)


def _decode_tasks(line: str | bytes) -> list[Event] | None:
    """The events of a ``tasks`` line in order, or None when it is none or any item is malformed.

    All or nothing: one writer wrote the line in one write, so a bad item means a bad line.
    """
    # Any other line is told by its first bytes, before the cost of decoding it.
    if not (line.startswith(_TASKS_PREFIX) if isinstance(line, str) else line.startswith(_TASKS_PREFIX_BYTES)):
        return None
    try:
        data = _json_decode(line if isinstance(line, str) else line.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if type(data) is not dict or data.get("v") != VERSION or type(data.get("v")) is not int:
        return None
    worker, ts, items = data.get("worker"), data.get("ts"), data.get("items")
    if type(worker) is not str or type(ts) not in _NUMBER or type(items) is not list:
        return None
    out: list[Event] = []
    append = out.append
    try:
        for item in items:
            if type(item) is not list or not item:
                return None
            code = item[0]
            if code == "d":
                _, at, tag, msg, acked = item
                fits = type(acked) is bool
            elif code == "s":
                _, at, tag, msg, seconds = item
                fits = type(seconds) in _NUMBER
            elif code == "r":
                _, at, tag, msg, body, redelivered = item
                fits = type(body) is str and type(redelivered) is bool
            elif code == "t":
                _, at, tag, msg, body, redelivered, acked = item
                fits = type(body) is str and type(redelivered) is bool and type(acked) is bool
            elif code == "R":
                _, at, tag, msg, body, redelivered, count = item
                fits = type(body) is str and type(redelivered) is bool and type(count) is int
            else:
                return None
            if (
                not fits
                or type(at) not in _NUMBER
                or type(tag) is not int
                or (msg is not None and type(msg) is not str)
            ):
                return None
            at = float(at)
            if code == "d":
                append(Done(worker, at, tag, msg, acked))
            elif code == "s":
                append(Started(worker, at, tag, msg, float(seconds)))
            elif code == "R":
                append(Received(worker, at, tag, msg, body, redelivered, count))
            else:
                append(Received(worker, at, tag, msg, body, redelivered))
                if code == "t":
                    append(Started(worker, at, tag, msg, 0.0))
                    append(Done(worker, at, tag, msg, acked))
    except (ValueError, OverflowError):  # a list of the wrong length; an integer too big for a float
        return None
    return out


_NUMBER = (float, int)


# Hot-path encoders: the worker writes three of these per task, so they avoid
# building a dict. Their output decodes to the same event as ``encode`` gives.

_dumps = json.JSONEncoder(ensure_ascii=False).encode
_encode_str = json.encoder.encode_basestring  # what _dumps does for a str, without its Python frames


def _json_text(value: str | None) -> str:
    if type(value) is str:
        return _encode_str(value)
    if value is None:  # no message_id: json.dumps would take microseconds to say so
        return "null"
    return _dumps(value)


def encode_received(worker_json: str, ts: float, tag: int, msg_id: str | None, body: str, redelivered: bool) -> str:
    """A ``received`` line; ``worker_json`` is the worker name already JSON-encoded."""
    return (
        f'{{"v":1,"event":"received","worker":{worker_json},"ts":{ts!r},"tag":{tag},'
        f'"msg_id":{_json_text(msg_id)},"body":{_json_text(body)},'
        f'"redelivered":{"true" if redelivered else "false"}}}\n'
    )


def encode_received_counted(
    worker_json: str, ts: float, tag: int, msg_id: str | None, body: str, redelivered: bool, count: int
) -> str:
    """A ``received`` line with the broker's ``delivery_count`` (a quorum queue's x-delivery-count)."""
    return encode_received(worker_json, ts, tag, msg_id, body, redelivered)[:-2] + f',"delivery_count":{int(count)}}}\n'


def encode_started(worker_json: str, ts: float, tag: int, msg_id: str | None, seconds: float) -> str:
    """A ``started`` line."""
    return (
        f'{{"v":1,"event":"started","worker":{worker_json},"ts":{ts!r},"tag":{tag},'
        f'"msg_id":{_json_text(msg_id)},"seconds":{float(seconds)!r}}}\n'
    )


def encode_done(worker_json: str, ts: float, tag: int, msg_id: str | None, acked: bool) -> str:
    """A ``done`` line."""
    return (
        f'{{"v":1,"event":"done","worker":{worker_json},"ts":{ts!r},"tag":{tag},'
        f'"msg_id":{_json_text(msg_id)},"acked":{"true" if acked else "false"}}}\n'
    )


def encode_inline_task(
    worker_json: str, ts: float, tag: int, msg_id: str | None, body: str, redelivered: bool, acked: bool
) -> str:
    """The received, started (0 s) and done lines of a task worked at once, all at ``ts``.

    The same three lines as encode_received + encode_started + encode_done give,
    with the shared keys encoded once: the worker's cost per task at prefetch 1.
    """
    shared = f'"worker":{worker_json},"ts":{ts!r},"tag":{tag},"msg_id":{_json_text(msg_id)}'
    return (
        f'{{"v":1,"event":"received",{shared},"body":{_json_text(body)},'
        f'"redelivered":{"true" if redelivered else "false"}}}\n'
        f'{{"v":1,"event":"started",{shared},"seconds":0.0}}\n'
        f'{{"v":1,"event":"done",{shared},"acked":{"true" if acked else "false"}}}\n'
    )


# Commands: dashboard -> worker, one JSON object per line on the worker's stdin.


@dataclass(frozen=True, slots=True)
class SetMode:
    """Change prefetch and ack mode between messages (cancel -> qos -> consume)."""

    prefetch: int
    ack: str


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop consuming; ``now`` abandons the current task, otherwise it is finished first."""

    now: bool = False


@dataclass(frozen=True, slots=True)
class SetFailMode:
    """Change what the worker does with a failing task from the next failure on (``requeue``, ``reject``, ``crash``)."""

    on_fail: str


Command = SetMode | Stop | SetFailMode


def encode_command(command: Command) -> str:
    """One JSON line for a command."""
    if isinstance(command, SetMode):
        data: dict[str, object] = {"cmd": "mode", "prefetch": command.prefetch, "ack": command.ack}
    elif isinstance(command, SetFailMode):
        data = {"cmd": "on_fail", "on_fail": command.on_fail}
    else:
        data = {"cmd": "stop", "now": command.now}
    return json.dumps(data, separators=(",", ":")) + "\n"


def decode_command(line: str | bytes) -> Command | None:
    """The command in one line, or None for anything else."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    cmd = data.get("cmd")
    if cmd == "mode":
        prefetch, ack = data.get("prefetch"), data.get("ack")
        if isinstance(prefetch, int) and not isinstance(prefetch, bool) and isinstance(ack, str):
            return SetMode(prefetch=prefetch, ack=ack)
        return None
    if cmd == "stop":
        return Stop(now=bool(data.get("now", False)))
    if cmd == "on_fail":
        on_fail = data.get("on_fail")
        return SetFailMode(on_fail) if isinstance(on_fail, str) else None
    return None
