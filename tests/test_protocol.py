"""Tests the worker event protocol: round trips, the hot-path encoders, and lines that must be refused."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields

import pytest

from workers import protocol
from workers.protocol import (
    BODY_CAP,
    EVENT_NAMES,
    AckLost,
    Alive,
    Cancelled,
    ChannelClosed,
    Connection,
    Done,
    Dropped,
    Error,
    Event,
    Failed,
    Mode,
    OnFail,
    Ready,
    Received,
    Returned,
    SetMode,
    Started,
    Stop,
    Stopped,
    decode,
    decode_command,
    encode,
    encode_command,
)

TS = 1_700_000_000.123456

SAMPLES: list[Event] = [
    Ready("w1", TS, 4242, "task_queue", 0, "manual"),
    Received("w1", TS, 1, "ab12-1", "First message.", False),
    Received("wörker «2»", TS, 2**40, None, 'quotes " and \\ and \n and ☃', True),
    Started("w1", TS, 7, "ab12-7", 0.5),
    Done("w1", TS, 7, "ab12-7", True),
    Done("w2", TS, 8, None, False),
    Returned("w1", TS, 9, "ab12-9", "mode-change"),
    Mode("w1", TS, 1, "auto"),
    Connection("w1", TS, "reconnecting", 3),
    Connection("w1", TS, "lost", 0, "CONNECTION_FORCED - class over [red]now[/]"),
    Alive("w1", TS, 60),
    Error("w1", TS, "Cannot reach a RabbitMQ broker at 127.0.0.1:1."),
    Stopped("w1", TS, "stop"),
    Cancelled("w1", TS, "queue-deleted"),
    ChannelClosed("w1", TS, 406, "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out."),
    AckLost("w1", TS, 1, "ab12-1", "ack-timeout"),
    AckLost("w2", TS, 2, None, "channel-closed"),
    Dropped("w1", TS, 12),
    Failed("w1", TS, 3, "ab12-3", "requeue"),
    Failed("w2", TS, 4, None, "crash"),
    OnFail("w1", TS, "reject"),
    Received("w1", TS, 5, "ab12-5", "Bad task!", True, 3),
    Ready("w1", TS, 4242, "task_queue", 1, "manual", "crash"),
]


def test_samples_cover_every_event_type() -> None:
    assert {type(e) for e in SAMPLES} == set(EVENT_NAMES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(event: Event) -> None:
    line = encode(event)
    assert line.endswith("\n") and line.count("\n") == 1, "one event, one line"
    assert decode(line) == event
    assert decode(line.encode("utf-8")) == event
    data = json.loads(line)
    assert data["v"] == 1 and data["event"] == EVENT_NAMES[type(event)]
    # A key added later (delivery_count) is written only when it says something.
    written = {f.name for f in fields(event) if getattr(event, f.name) is not None or f.default is MISSING}
    assert set(data) == {"v", "event"} | written


def test_integral_timestamps_decode_as_floats() -> None:
    line = '{"v":1,"event":"started","worker":"w","ts":12,"tag":1,"msg_id":null,"seconds":2}'
    event = decode(line)
    assert event == Started("w", 12.0, 1, None, 2.0)
    assert isinstance(event, Started) and isinstance(event.ts, float) and isinstance(event.seconds, float)


WORKER_NAMES = ["w1", 'we"ird\\name', "ünïcødé ☃"]
BODIES = ["", "First message.", 'a "quoted" \\ body\twith\ncontrol \x01 chars', "☃ snow", "\\xff\\xfe bad..."]


@pytest.mark.parametrize("name", WORKER_NAMES)
@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("msg_id", [None, "ab12-3", 'id"with\\quote'])
def test_hot_path_encoders_match_encode(name: str, body: str, msg_id: str | None) -> None:
    name_json = json.dumps(name, ensure_ascii=False)
    for redelivered in (False, True):
        fast = protocol.encode_received(name_json, TS, 5, msg_id, body, redelivered)
        slow = encode(Received(name, TS, 5, msg_id, body, redelivered))
        assert fast.endswith("\n") and fast.count("\n") == 1
        assert decode(fast) == decode(slow) == Received(name, TS, 5, msg_id, body, redelivered)
    for seconds in (0.0, 0.30000000000000004, 3):
        fast = protocol.encode_started(name_json, TS, 6, msg_id, seconds)
        assert decode(fast) == decode(encode(Started(name, TS, 6, msg_id, float(seconds))))
        assert decode(fast) is not None
    for acked in (False, True):
        fast = protocol.encode_done(name_json, TS, 7, msg_id, acked)
        assert decode(fast) == decode(encode(Done(name, TS, 7, msg_id, acked))) == Done(name, TS, 7, msg_id, acked)


def _received_dict() -> dict[str, object]:
    return json.loads(encode(SAMPLES[1]))  # type: ignore[no-any-return]


GARBAGE: list[str | bytes] = [
    "",
    "\n",
    "not json at all",
    "{",
    "[1, 2, 3]",
    '"a string"',
    "42",
    "null",
    '{"v":1}',
    '{"v":1,"event":"nosuch","worker":"w","ts":1}',
    '{"v":1,"event":["received"],"worker":"w","ts":1}',
    '{"v":1,"event":{"k":1},"worker":"w","ts":1}',
    '{"v":2,"event":"stopped","worker":"w","ts":1.0,"reason":"stop"}',
    '{"v":"1","event":"stopped","worker":"w","ts":1.0,"reason":"stop"}',
    '{"v":true,"event":"stopped","worker":"w","ts":1.0,"reason":"stop"}',
    '{"event":"stopped","worker":"w","ts":1.0,"reason":"stop"}',
    '{"v":1,"event":"stopped","worker":"w","ts":true,"reason":"stop"}',
    '{"v":1,"event":"stopped","worker":"w","ts":"1.0","reason":"stop"}',
    '{"v":1,"event":"stopped","worker":7,"ts":1.0,"reason":"stop"}',
    '{"v":1,"event":"done","worker":"w","ts":1.0,"tag":true,"msg_id":"a","acked":true}',
    '{"v":1,"event":"done","worker":"w","ts":1.0,"tag":1.5,"msg_id":"a","acked":true}',
    '{"v":1,"event":"done","worker":"w","ts":1.0,"tag":1,"msg_id":"a","acked":1}',
    '{"v":1,"event":"done","worker":"w","ts":1.0,"tag":1,"msg_id":3,"acked":true}',
    '{"v":1,"event":"ready","worker":"w","ts":1.0,"pid":1,"queue":"q","prefetch":false,"ack":"manual"}',
    '{"v":1,"event":"connection","worker":"w","ts":1.0,"state":"lost","attempt":null}',
    b"\xff\xfe\x00\x01 binary junk",
    b'{"v":1,"event":"stopped","worker":"\xff","ts":1.0,"reason":"stop"}',
    bytes(range(256)),
    "[" * 100_000,
    '{"a":' * 100_000,
    '{"v":1,"event":"stopped","worker":"w","ts":1.0,"reason":"stop"} trailing',
    "NaN",
]


@pytest.mark.parametrize("line", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_decodes_to_none(line: str | bytes) -> None:
    assert decode(line) is None


def _hot_lines() -> list[bytes]:
    """What workers write most, as the encoders write it: each hot kind, odd names and ids included."""
    lines = []
    for name in WORKER_NAMES:
        name_json = json.dumps(name, ensure_ascii=False)
        for msg_id in (None, "ab12-3", "", 'id"with\\quote'):
            for body in BODIES[:3]:
                lines.append(protocol.encode_received(name_json, TS, 5, msg_id, body, msg_id is None))
            lines.append(protocol.encode_started(name_json, TS, 6, msg_id, 0.30000000000000004))
            lines += protocol.encode_inline_task(name_json, 1e-7, 7, msg_id, "b", False, msg_id == "").splitlines(True)
    return [line.encode() for line in lines]


ODD_LINES: list[bytes] = [
    b"\n",
    b"   \n",
    b'{"v":1,"event":"done","worker":"w","ts":1.0,"tag":1,"msg_id":"a","seconds":2.0}\n',  # a kind with another's keys
    b'{"v":1,"event":"started","worker":"w","ts":1.0,"tag":1,"msg_id":"a","acked":true}\n',
    b'{"v":1,"event":"done","worker":"w","ts":1.0,"tag":01,"msg_id":"a","acked":true}\n',
    b'{"v":1,"event":"done","worker":"w","ts":1.0,"tag":1,"msg_id":"a","acked":true}\r\n',
    b'{"v":1,"event":"done","worker":"w","ts":1.0,"tag":1,"msg_id":"a","acked":true}  \n',
    b'xx{"v":1,"event":"done","worker":"w","ts":1.0,"tag":1,"msg_id":"a","acked":true}\n',
    b'{"v":1,"event":"done","worker":"w\\u00e9","ts":1.0,"tag":1,"msg_id":"a","acked":true}\n',
    b'{"v":1,"event":"done","worker":"w","ts":NaN,"tag":1,"msg_id":"a","acked":true}\n',
    "\u2028 a line with unicode separators \x85\n".encode(),
    *(encode(event).encode() for event in SAMPLES),
    *(line.encode() + b"\n" if isinstance(line, str) else line + b"\n" for line in GARBAGE[:27]),
]


def _line_by_line(data: bytes) -> tuple[list[Event | bytes], bool]:
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()
    decoded = [(decode(line), line) for line in lines]
    clean = all(event is not None for event, _ in decoded)
    return [event if event is not None else line for event, line in decoded if event or line.strip()], clean


@pytest.mark.parametrize("odd", [None, *range(len(ODD_LINES))])
def test_decode_lines_gives_what_decode_gives_line_by_line(odd: int | None) -> None:
    hot = _hot_lines()
    block = hot[:7] + ([] if odd is None else [ODD_LINES[odd]]) + hot[7:]
    for data in (b"".join(block), b"".join(block).rstrip(b"\n")):  # the last line may come unfinished
        events, clean = protocol.decode_lines(data)
        assert (events, clean) == _line_by_line(data)
    if odd is None:
        assert clean and len(events) == len(hot) and all(not isinstance(e, bytes) for e in events)


def test_decode_lines_of_nothing() -> None:
    assert protocol.decode_lines(b"") == ([], True)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_missing_key_is_refused(event: Event) -> None:
    data = json.loads(encode(event))
    added_later = {f.name for f in fields(event) if f.default is not MISSING}
    for key in data:
        if key in added_later:
            continue  # see test_a_key_added_later_may_be_missing
        partial = {k: v for k, v in data.items() if k != key}
        assert decode(json.dumps(partial)) is None, f"{type(event).__name__} without {key!r} was accepted"


def wrong_values(key: str, value: object) -> list[object]:
    """Values of the wrong JSON type for a field (bools where numbers go, and the reverse)."""
    wrong: list[object] = [[], {"k": 1}]
    wrong.append(7 if key == "msg_id" or isinstance(value, str) else "7")
    if isinstance(value, bool):
        wrong += [1, 0, None]
    elif isinstance(value, int) and key not in ("ts", "seconds"):
        wrong += [True, 1.5, None]
    elif isinstance(value, (int, float)):
        wrong += [False, None]
    elif key != "msg_id":
        wrong.append(None)
    return wrong


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_wrongly_typed_value_is_refused(event: Event) -> None:
    data = json.loads(encode(event))
    for key, value in data.items():
        if key in ("v", "event"):
            continue
        for wrong in wrong_values(key, value):
            bad = dict(data, **{key: wrong})
            assert decode(json.dumps(bad)) is None, f"{type(event).__name__} with {key}={wrong!r} was accepted"


def test_a_key_added_later_may_be_missing() -> None:
    """A connection line from a worker older than its ``reason`` key still decodes (a saved session replays)."""
    old = '{"v":1,"event":"connection","worker":"w1","ts":12.5,"state":"lost","attempt":0}'
    assert decode(old) == Connection("w1", 12.5, "lost", 0, "")
    assert decode(old.replace('"attempt":0', '"attempt":0,"reason":7')) is None, "present, it has its type"
    assert protocol.decode_all(old) == [Connection("w1", 12.5, "lost", 0)]


def test_new_kinds_stand_between_tasks_lines_in_order() -> None:
    """The broker's interventions are v1 lines among the compact ``tasks`` lines, in the order written."""
    line, events = _compact_sample()
    closed = ChannelClosed("wörker", TS + 5, 406, "PRECONDITION_FAILED - [/] timed out")
    lost = AckLost("wörker", TS + 6, 1, "ab12-1", "ack-timeout")
    block = line + encode(closed) + encode(lost) + line
    decoded, clean = protocol.decode_lines(block.encode())
    assert clean and decoded == [*events, closed, lost, *events]


def test_extra_keys_are_tolerated() -> None:
    """New keys may be added to the protocol; old readers keep working."""
    data = _received_dict()
    data["future_key"] = {"nested": [1, 2]}
    assert decode(json.dumps(data)) == SAMPLES[1]


def test_body_cap_is_documented_size() -> None:
    assert BODY_CAP == 200


COMMANDS = [SetMode(1, "manual"), SetMode(0, "auto"), SetMode(65535, "none"), Stop(), Stop(now=True)]


@pytest.mark.parametrize("command", COMMANDS, ids=repr)
def test_command_round_trip(command: protocol.Command) -> None:
    line = encode_command(command)
    assert line.endswith("\n") and line.count("\n") == 1
    assert decode_command(line) == command
    assert decode_command(line.encode()) == command


def test_documented_command_lines() -> None:
    assert decode_command('{"cmd":"mode","prefetch":1,"ack":"manual"}') == SetMode(1, "manual")
    assert decode_command('{"cmd":"stop"}') == Stop(now=False)


BAD_COMMANDS: list[str | bytes] = [
    "",
    "stop",
    "[]",
    "{}",
    '{"cmd":"nosuch"}',
    '{"cmd":["stop"]}',
    '{"cmd":"mode","prefetch":"1","ack":"manual"}',
    '{"cmd":"mode","prefetch":true,"ack":"manual"}',
    '{"cmd":"mode","prefetch":1.5,"ack":"manual"}',
    '{"cmd":"mode","prefetch":1}',
    '{"cmd":"mode","prefetch":1,"ack":7}',
    b"\xff\xfe",
    "[" * 100_000,
]


@pytest.mark.parametrize("line", BAD_COMMANDS, ids=range(len(BAD_COMMANDS)))
def test_bad_commands_decode_to_none(line: str | bytes) -> None:
    assert decode_command(line) is None


# ----- the compact form: ``tasks`` lines


def _compact_sample() -> tuple[str, list[Event]]:
    items = [
        protocol.item_received(TS, 1, "ab12-1", "First message.", False),
        protocol.item_started(TS + 1, 1, "ab12-1", 2),
        protocol.item_done(TS + 3, 1, "ab12-1", True),
        protocol.item_worked(TS + 4, 2**40, None, 'quotes " and \\ and \n and ☃', True, False),
    ]
    events: list[Event] = [
        Received("wörker", TS, 1, "ab12-1", "First message.", False),
        Started("wörker", TS + 1, 1, "ab12-1", 2.0),
        Done("wörker", TS + 3, 1, "ab12-1", True),
        Received("wörker", TS + 4, 2**40, None, 'quotes " and \\ and \n and ☃', True),
        Started("wörker", TS + 4, 2**40, None, 0.0),
        Done("wörker", TS + 4, 2**40, None, False),
    ]
    return protocol.encode_tasks(json.dumps("wörker", ensure_ascii=False), items), events


def test_a_tasks_line_gives_the_events_its_items_stand_for_in_order() -> None:
    line, events = _compact_sample()
    assert line.endswith("\n") and line.count("\n") == 1
    assert protocol.decode_all(line) == events
    assert protocol.decode_all(line.encode()) == events
    assert decode(line) is None, "not one event: readers of single events do not take it for one"
    assert protocol.decode_all(encode(events[0])) == [events[0]]
    # Mixed with v1 lines in one read, as a worker's pipe gives them: the same order.
    ready = Ready("wörker", TS, 1, "q", 5, "manual")
    block = encode(ready) + line + encode(events[2]) + line
    decoded, clean = protocol.decode_lines(block.encode())
    assert clean and decoded == [ready, *events, events[2], *events]


@pytest.mark.parametrize(
    "item",
    [
        protocol.item_worked(TS, 7, "ab12-7", 'quotes " \\ \n ☃ [/] \u2028 \x00', True, False),
        protocol.item_worked(TS, 2**70, None, "", False, True),
        protocol.item_received(TS + 0.1, 3, None, "[bold]x[/]", True),
        protocol.item_started(TS + 0.2, 3, "m-3", 2.5),
        protocol.item_done(TS + 0.3, 3, "m-3", False),
        protocol.item_worked(float("nan"), 1, "a", "b", True, False),
        protocol.item_worked(float("inf"), 1, "a", "b", True, False),
        protocol.item_done(float("-inf"), 1, "a", True),
        protocol.item_started(TS, 1, "a", float("inf")),
        protocol.item_done(1e-7, 1, "a", True),
    ],
)
def test_each_item_is_written_as_json_writes_it(item: protocol.TaskItem) -> None:
    """The worker's own item encoding (a third of json's per-call cost) gives json's very text."""
    line = protocol.encode_tasks('"w1"', [item, item])
    expected = json.dumps([list(item)] * 2, ensure_ascii=False, separators=(",", ":"))
    assert line.split('"items":', 1)[1] == expected + "}\n"


BAD_ITEMS: list[object] = [
    ["d", TS, 1, "a"],  # too short
    ["d", TS, 1, "a", True, 1],  # too long
    ["d", "1.0", 1, "a", True],
    ["d", TS, "1", "a", True],
    ["d", TS, True, "a", True],
    ["d", TS, 1.0, "a", True],
    ["d", TS, 1, 7, True],
    ["d", TS, 1, "a", "true"],
    ["d", TS, 1, "a", 1],
    ["s", TS, 1, "a", "2"],
    ["s", TS, 1, "a", None],
    ["r", TS, 1, "a", None, False],
    ["r", TS, 1, "a", "body", 0],
    ["t", TS, 1, "a", "body", False, None],
    ["t", TS, 1, "a", "body", False],
    ["x", TS, 1, "a", True],
    [],
    "d",
    {"d": 1},
    ["d", 10**400, 1, "a", True],  # too big for a float
]


@pytest.mark.parametrize("bad", range(len(BAD_ITEMS)))
def test_a_tasks_line_with_any_bad_item_is_refused_whole(bad: int) -> None:
    good = ["d", TS, 1, "a", True]
    items = json.dumps([good, BAD_ITEMS[bad], good])
    line = f'{{"v":1,"event":"tasks","worker":"w1","ts":{TS},"items":{items}}}\n'
    assert protocol.decode_all(line) is None
    decoded, clean = protocol.decode_lines(line.encode())
    assert not clean and decoded == [line.encode().rstrip(b"\n")]


@pytest.mark.parametrize(
    "line",
    [
        '{"v":1,"event":"tasks","worker":"w1","ts":1.0,"items":{}}',
        '{"v":1,"event":"tasks","worker":1,"ts":1.0,"items":[]}',
        '{"v":1,"event":"tasks","worker":"w1","ts":"1","items":[]}',
        '{"v":true,"event":"tasks","worker":"w1","ts":1.0,"items":[]}',
        '{"v":2,"event":"tasks","worker":"w1","ts":1.0,"items":[]}',
        '{"v":1,"event":"tasks","worker":"w1","ts":1.0,"items":[["d",1.0,1,"a",true]]',
        '{"v":1,"event":"tasks","worker":"w1","ts":1.0,"items":[["d",NaN,1,"a",true]]}',
        '{"v":1,"event":"tasks",' + "[" * 100_000,
        b'{"v":1,"event":"tasks","worker":"w\xff","ts":1.0,"items":[]}',
    ],
)
def test_a_malformed_tasks_line_is_no_event(line: str | bytes) -> None:
    assert protocol.decode_all(line) is None
    data = line if isinstance(line, bytes) else line.encode()
    decoded, clean = protocol.decode_lines(data + b"\n")
    assert not clean and all(isinstance(item, bytes) for item in decoded)
