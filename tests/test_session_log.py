"""The session log: every observation survives a round trip, bad lines are skipped, the writer's thread.

Pure: no broker, no Textual. A recorded session written through ``SessionLog``
and read back must fold into the same model as the recorded events themselves,
since ``dispatch-lab replay`` shows exactly that model.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.recordings import (
    PREFIX,
    T0,
    Recording,
    replay,
    session_auto_ack_loss,
    session_duplicate,
    session_forgotten_ack,
    session_kill,
    session_mode_change,
    session_round_robin,
)
from tui.engine import session_log
from tui.engine.session_log import SessionLog, decode, encode, read
from tui.model import observations as obs
from tui.model.state import Model
from tui.view import timeline
from workers import protocol
from workers.settings import DispatchMode

EXTERNAL = obs.ExternalConsumer("10.0.0.7:51234 -> 10.0.0.2:5672", 5, True, 2)
COUNTED = obs.ExternalConsumer("worker.py", 1, True, 1, "10.0.0.7:51240 -> 10.0.0.2:5672 (1)", 12, 11)
SAMPLES: list[obs.Observation] = [
    protocol.Ready("w1", T0, 4101, "task_queue", 0, "manual"),
    protocol.Received("w1", T0 + 0.1, 1, "ab12-1", "Héllo wörld…", False),
    protocol.Received("w2", T0 + 0.2, 7, None, 'anonymous "quoted" body\\', True),
    protocol.Started("w1", T0 + 0.3, 1, "ab12-1", 2.5),
    protocol.Done("w1", T0 + 2.8, 1, "ab12-1", True),
    protocol.Done("w3", T0 + 2.9, 2, None, False),
    protocol.Returned("w2", T0 + 3, 7, None, "mode-change"),
    protocol.Mode("w2", T0 + 3.1, 10, "auto"),
    protocol.Connection("w1", T0 + 4, "reconnecting", 3),
    protocol.Alive("w1", T0 + 5, 60),
    protocol.Error("w1", T0 + 6, "connection refused; retrying"),
    protocol.Stopped("w1", T0 + 7, "stop"),
    protocol.Connection("w2", T0 + 7.1, "lost", 0, "CONNECTION_FORCED - [/] class over"),
    protocol.Cancelled("w2", T0 + 7.2, "queue-deleted"),
    protocol.ChannelClosed(
        "w2", T0 + 7.3, 406, "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out"
    ),
    protocol.AckLost("w2", T0 + 7.4, 3, "ab12-3", "ack-timeout"),
    protocol.Dropped("alice-laptop", T0 + 7.45, 5),
    obs.WorkerSpawned("w1", T0, 4101),
    obs.WorkerExited("w1", T0 + 8, -9),
    obs.WorkerStderr("w1", T0 + 8, "Traceback: nothing to see"),
    obs.WorkerGarbage("w2", T0 + 8, "{not json"),
    obs.StopRequested("w1", T0 + 7.5, True),
    obs.RemoteWorkerHeard("alice-laptop", T0 + 7.6, "laptop", 4242),
    obs.Published("ab12-1", T0, "Task..."),
    obs.Confirmed("ab12-1", T0 + 0.01),
    obs.PublishFailed("ab12-2", T0 + 0.02, "The broker refused the message."),
    obs.Republished("ab12-1", T0 + 0.03, "Lost the connection [/] while publishing."),
    obs.PublisherBlocked(T0 + 0.04, "low on memory"),
    obs.PublisherUnblocked(T0 + 0.05),
    obs.QueueSample(T0 + 1, 3, 2),
    obs.QueueSample(T0 + 1.5, 0, 1, 4, (EXTERNAL,)),
    obs.QueueSample(T0 + 1.6, 0, 1, None, ()),
    obs.QueueSample(T0 + 1.7, 0, 2, 1, (COUNTED, EXTERNAL)),
    obs.ManagementChecked(T0, "http://127.0.0.1:15672", "ignoring the management API at http://127.0.0.1:15672: …"),
    obs.ManagementChecked(T0, "http://127.0.0.1:41234"),
    obs.BrokerStatus(T0, "connected"),
    obs.BrokerStatus(T0 + 9, "reconnecting", 2, "Connection refused."),
    obs.Purged(T0 + 10, 12),
    obs.ModeRequested(T0 + 11, 1, "manual"),
    obs.ModeRequested(T0 + 11, 10, "auto", ("w1", "w3")),
    obs.SessionStarted(T0, "task_queue", PREFIX, 0, "manual", True, "amqp://guest:***@localhost:5672/%2F"),
    obs.BrokerRestarted(T0 + 12, False, 3.25),
    obs.RunStarted(T0 + 13, "odd-heavy [/]", 9, 8, 0, "manual"),
    protocol.Failed("w1", T0 + 13, 4, "ab12-4", "requeue"),
    protocol.OnFail("w1", T0 + 13.1, "crash"),
    protocol.Received("w1", T0 + 13.2, 5, "ab12-4", "Bad task!", True, 2),
    obs.FailModeRequested(T0 + 13, "reject"),
    obs.DeadLettersSampled(T0 + 14, "q.dead", 2, (obs.DeadLetterSeen("ab12-4", "rejected", 1, "Bad [/] task!"),)),
    obs.DeadLettersSampled(T0 + 14.5, "q.dead", 0),
    obs.DeadLettersMoved(T0 + 15, "q.dead", ("ab12-4", "")),
    obs.DeadLettersMoved(T0 + 15.5, "q.dead", (), "NOT_FOUND - no queue 'q.dead'"),
    obs.SessionStarted(
        T0,
        "q",
        PREFIX,
        1,
        "manual",
        True,
        "amqp://guest:***@h/",
        "crash",
        "quorum",
        3,
        True,
        "3.10.8",
        10.0,
        "set on the private node",
    ),
]


def test_the_samples_cover_every_kind_of_observation() -> None:
    """A new observation or event kind needs a sample here, and so a round trip."""
    assert {type(item) for item in SAMPLES} == set(typing.get_args(obs.Observation))


@pytest.mark.parametrize("item", SAMPLES, ids=lambda item: type(item).__name__)
def test_every_observation_survives_a_round_trip(item: obs.Observation) -> None:
    line = encode(item)
    assert line.endswith("\n") and line.count("\n") == 1, line
    data = json.loads(line)
    if isinstance(item, protocol.Event):
        # Worker events keep the protocol's own form, so other tools read the log as they read a worker.
        assert (data["v"], data["event"]) == (1, protocol.EVENT_NAMES[type(item)]) and "obs" not in data
        assert line == protocol.encode(item)
    else:
        assert data["obs"] == type(item).__name__
    back = decode(line)
    assert back == item and type(back) is type(item)
    assert decode(line.encode("utf-8")) == item  # read() hands it bytes


def good_lines() -> list[str]:
    return [encode(item) for item in SAMPLES[:6]]


BAD_LINES = [
    "\n",
    "not json at all\n",
    '{"obs": "Published", "msg_id": "ab12-9", "ts": 1.0\n',  # cut off
    "[1, 2, 3]\n",
    '"just a string"\n',
    '{"obs": "NoSuchThing", "ts": 1.0}\n',
    '{"obs": "Confirmed", "ts": 1.0}\n',  # a field missing
    '{"obs": "Confirmed", "msg_id": "ab12-1", "ts": 1.0, "extra": 1}\n',  # a field too many
    '{"obs": "WorkerExited", "worker": "w1", "ts": 1.0, "code": "x"}\n',  # would crash the model's fold
    '{"obs": "Published", "msg_id": "ab12-9", "ts": "later", "body": "x"}\n',
    '{"obs": "QueueSample", "ts": 1.0, "ready": "3", "consumers": 1}\n',
    '{"obs": "QueueSample", "ts": 1.0, "ready": 0, "consumers": 0, "external": [{"who": 1}]}\n',
    '{"obs": "StopRequested", "worker": "w1", "ts": 1.0, "kill": 1}\n',
    '{"v": 1, "event": "done", "worker": "w1", "ts": 1.0, "tag": "one", "msg_id": null, "acked": true}\n',
    '{"v": 2, "event": "alive", "worker": "w1", "ts": 1.0, "heartbeat": 60}\n',
]


def test_read_skips_every_bad_line_and_keeps_the_good_ones_in_order(tmp_path: Path) -> None:
    good = good_lines()
    path = tmp_path / "events.jsonl"
    with path.open("wb") as stream:
        for index, line in enumerate(good):
            stream.write(line.encode("utf-8"))
            if index < len(BAD_LINES):
                stream.write(BAD_LINES[index].encode("utf-8"))
        stream.writelines(line.encode("utf-8") for line in BAD_LINES[len(good) :])
        stream.write(b"\xff\xfe not utf-8\n")
        stream.write(good[0].rstrip("\n").encode("utf-8"))  # the last line, without its newline
        stream.write(b'\n{"obs": "Confirmed", "msg_id": "ab1')  # a log cut off mid-line
    assert list(read(path)) == [*SAMPLES[:6], SAMPLES[0]]


def test_each_bad_line_alone_decodes_to_nothing() -> None:
    for line in BAD_LINES:
        assert decode(line) is None, line


def test_a_read_log_folds_without_a_crash_even_when_garbled(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(BAD_LINES) + "".join(encode(item) for item in SAMPLES), encoding="utf-8")
    model = Model()
    model.apply_all(read(path))  # a bad line that slipped through would raise here
    assert model.events == len(SAMPLES)
    timeline.render(model, T0 + 20, 60)


# ----- the writer


def test_session_log_writes_on_its_own_thread_and_flush_makes_it_all_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[str] = set()

    def spying(item: obs.Observation) -> str:
        threads.add(threading.current_thread().name)
        return encode(item)

    monkeypatch.setattr(session_log, "encode", spying)
    log = SessionLog(tmp_path / "deep" / "folder" / "events.jsonl")
    log.start()
    try:
        for start in range(0, len(SAMPLES), 7):
            log.add(SAMPLES[start : start + 7])
        log.add([])  # nothing to write is no batch
        log.flush()
        assert list(read(log.path)) == SAMPLES, "flush() returned before everything was on disk"
        assert log.written == len(SAMPLES)
        assert threads == {"session-log"}, f"encoded on {threads}: the caller's thread must not write"

        log.add(SAMPLES[:3])
        log.flush()
        assert list(read(log.path)) == [*SAMPLES, *SAMPLES[:3]]
    finally:
        log.close()


def test_close_writes_the_rest_and_can_be_called_again(tmp_path: Path) -> None:
    log = SessionLog(tmp_path / "events.jsonl")
    log.start()
    batches = 50
    for _ in range(batches):
        log.add(list(SAMPLES))
    log.close()
    assert not log._thread.is_alive(), "the writer thread outlived close()"
    assert list(read(log.path)) == SAMPLES * batches
    assert log.written == len(SAMPLES) * batches

    log.close()  # again: nothing happens
    log.add(SAMPLES[:1])  # after close: dropped, not an error
    log.flush()  # returns at once
    assert log.written == len(SAMPLES) * batches
    assert sum(1 for _ in read(log.path)) == len(SAMPLES) * batches


def test_a_log_never_started_does_nothing(tmp_path: Path) -> None:
    log = SessionLog(tmp_path / "events.jsonl")
    log.add(SAMPLES)
    log.flush()
    log.close()
    assert not log.path.exists() and log.written == 0


# ----- replaying a session from its log

SESSIONS: dict[str, Callable[[], Recording]] = {
    "round-robin": session_round_robin,
    "kill": session_kill,
    "auto-ack loss": session_auto_ack_loss,
    "mode change": session_mode_change,
    "forgotten ack": session_forgotten_ack,
    "duplicate": session_duplicate,
}
MODE = DispatchMode(0, "manual")
STARTED = obs.SessionStarted(T0, "task_queue", PREFIX, MODE.prefetch, MODE.ack, True, "amqp://guest:***@h:5672/%2F")


def figures(model: Model, now: float) -> dict[str, Any]:
    """Every figure the dashboard shows from a model, in plain values."""
    ledger = model.ledger
    return {
        "mode": model.mode,
        "queue": (model.queue_name, dataclasses.astuple(model.queue)),
        "totals": (
            ledger.published,
            ledger.confirmed,
            ledger.deliveries,
            ledger.redeliveries,
            ledger.done_messages,
            ledger.duplicates,
            ledger.lost,
            ledger.lost_unseen,
        ),
        "states": {state: count for state, count in ledger.state_counts.items() if count},
        "lifelines": [record.lifeline() for record in ledger.records.values()],
        "deliveries": [[dataclasses.astuple(d) for d in r.deliveries] for r in ledger.records.values()],
        "workers": {
            name: (w.status, w.exit_code, w.received, w.done, w.redelivered, w.in_hand, list(w.log))
            for name, w in model.workers.items()
        },
        "lanes": {name: [dataclasses.astuple(b) for b in w.lane] for name, w in model.workers.items()},
        "balance": model.balance(now),
        "unacked": model.unacked(now),
        "timeline": timeline.render(model, now, 80).plain,
    }


@pytest.mark.parametrize("session", SESSIONS)
def test_a_session_replayed_from_its_log_is_the_session(tmp_path: Path, session: str) -> None:
    recording = SESSIONS[session]()
    log = SessionLog(tmp_path / "events.jsonl")
    log.start()
    log.add([STARTED])
    for start in range(0, len(recording.events), 5):  # in batches, as the refresh timer hands them over
        log.add(recording.events[start : start + 5])
    log.close()

    direct = replay(recording.events, mode=MODE)
    replayed = Model()  # as `dispatch-lab replay` builds it: all it knows comes from the log
    replayed.apply_all(read(log.path))
    assert replayed.events == direct.events + 1  # the SessionStarted line
    assert replayed.ledger.prefix == PREFIX and replayed.broker == STARTED.broker
    for now in (recording.end, recording.end + 30):
        assert figures(replayed, now) == figures(direct, now)
    assert figures(direct, recording.end)["totals"][1] > 0, "an empty session proves nothing"


def test_worker_output_is_logged_as_it_came_unless_it_holds_garbage(tmp_path: Path) -> None:
    """Clean worker lines go to the log verbatim; a blob with a bad line goes as decoded events, masked."""
    from tui.engine.pool import Inbox, WorkerOutput

    secret = "Zq9-log-PW"
    inbox = Inbox()
    inbox.garbage_text = lambda line: line.decode().replace(secret, "***")
    done = protocol.Done("w1", T0, 1, f"{PREFIX}-1", True)
    started = protocol.Started("w1", T0, 1, f"{PREFIX}-1", 0.0)
    clean = WorkerOutput("w1", protocol.encode(started).encode() + protocol.encode(done).encode())
    dirty = WorkerOutput("w1", f"url amqp://u:{secret}@h\n".encode() + protocol.encode(done).encode())
    parts = list(inbox.slices([clean, dirty]))
    events = [item for part, _ in parts for item in part]
    logged = [item for _, log in parts for item in log]
    assert events[:2] == [started, done] and events[3] == done
    assert isinstance(events[2], obs.WorkerGarbage) and events[2].line == "url amqp://u:***@h"
    assert logged[0] is clean and logged[1:] == events[2:]
    log = SessionLog(tmp_path / "events.jsonl")
    log.start()
    log.add(logged)
    log.close()
    text = (tmp_path / "events.jsonl").read_text()
    assert secret not in text
    assert list(read(tmp_path / "events.jsonl")) == events
    assert log.written == 4


def test_tasks_lines_are_logged_as_they_came_and_read_back_as_their_events(tmp_path: Path) -> None:
    """The compact form the dashboard asks its workers for stays compact in the log; replay expands it."""
    from tui.engine.pool import Inbox, WorkerOutput

    items = [
        protocol.item_received(T0, 1, f"{PREFIX}-1", "a.", False),
        protocol.item_started(T0 + 0.1, 1, f"{PREFIX}-1", 1.0),
        protocol.item_done(T0 + 1.1, 1, f"{PREFIX}-1", True),
        protocol.item_worked(T0 + 2, 2, f"{PREFIX}-2", "b", True, True),
    ]
    alive = protocol.Alive("w1", T0 + 3, 60)
    output = WorkerOutput("w1", (protocol.encode_tasks('"w1"', items) + protocol.encode(alive)).encode())
    [(events, logged)] = list(Inbox().slices([output]))
    assert len(events) == 7 and events[-1] == alive and logged == [output]
    log = SessionLog(tmp_path / "events.jsonl")
    log.start()
    log.add(logged)
    log.close()
    assert (tmp_path / "events.jsonl").read_bytes() == output.data
    assert list(read(tmp_path / "events.jsonl")) == events
    assert log.written == 4 + 2, "a log counts the items of a tasks line"


def test_a_log_written_before_channel_counts_still_reads() -> None:
    """Logs saved before consumers carried their channel's counts decode with those unknown."""
    line = (
        '{"obs":"QueueSample","ts":1.0,"ready":0,"consumers":2,"unacked":1,"external":'
        '[{"connection":"worker.py","prefetch":1,"ack_required":true,"unacked":1}]}\n'
    )
    sample = decode(line)
    assert isinstance(sample, obs.QueueSample) and sample.external is not None
    assert sample.external[0] == obs.ExternalConsumer("worker.py", 1, True, 1, "", None, None)
    bad = line.replace('"unacked":1}', '"unacked":1,"delivered":"many"}')
    assert decode(bad) is not None and decode(bad).external == ()  # type: ignore[union-attr]
