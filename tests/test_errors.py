"""Tests the errors a user can cause: one clear sentence, a non-zero exit, no traceback, no password."""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pika
import pytest

from tests.conftest import WorkerFactory
from tests.helpers import CliResult, delete_queue, publish_raw, run_module, wait_figures
from workers import protocol
from workers.broker import ManagementApi
from workers.protocol import Done, Received
from workers.settings import url_parts

pytestmark = pytest.mark.broker

PROGRAMS = {
    "worker": ("workers.worker", ["--events"]),
    "worker-tutorial": ("workers.worker", []),
    "new_task": ("workers.new_task", ["Hello."]),
}


def run_program(program: str, queue: str, url: str | None, *extra: str) -> CliResult:
    module, args = PROGRAMS[program]
    return run_module(module, ["--queue", queue, *args, *extra], url, timeout=30)


def assert_one_sentence(result: CliResult, fragment: str, secret: str | None) -> str:
    """The run failed with one sentence on stderr containing ``fragment``; returns it."""
    assert result.code != 0, result
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    sentence = lines[0]
    assert fragment in sentence, sentence
    assert sentence.rstrip().endswith("."), sentence
    if secret:
        assert secret not in result.output, f"the password leaked: {result.output}"
    return sentence


def assert_events_agree(program: str, result: CliResult, sentence: str) -> None:
    """In events mode stdout holds an error event with the same sentence, then stopped(error)."""
    if program != "worker":
        return
    events = [protocol.decode(line) for line in result.stdout.splitlines()]
    assert None not in events, result.stdout
    kinds = [type(e) for e in events]
    assert kinds == [protocol.Error, protocol.Stopped], kinds
    error, stopped = events
    assert isinstance(error, protocol.Error) and isinstance(stopped, protocol.Stopped)
    assert sentence.endswith(error.message)
    assert stopped.reason == "error"


def broker_url_with(broker_url: str, *, password: str | None = None, vhost: str | None = None) -> str:
    parts = url_parts(broker_url)
    return (
        f"amqp://{quote(parts.user, safe='')}:{quote(password or parts.password, safe='')}"
        f"@{parts.host}:{parts.port}/{quote(vhost or parts.vhost, safe='')}"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("program", list(PROGRAMS))
def test_broker_unreachable(program: str, queue_name: str) -> None:
    result = run_program(program, queue_name, "amqp://guest:s3cretPW@127.0.0.1:1/%2F")
    sentence = assert_one_sentence(result, "Cannot reach a RabbitMQ broker at 127.0.0.1:1", "s3cretPW")
    assert "docker compose up -d" in sentence and "rabbitmq-server" in sentence, "names the fixes"
    assert_events_agree(program, result, sentence)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("program", list(PROGRAMS))
def test_wrong_credentials(program: str, broker_url: str, queue_name: str) -> None:
    url = broker_url_with(broker_url, password="wrongPW123")
    result = run_program(program, queue_name, url)
    sentence = assert_one_sentence(result, "refused the login", "wrongPW123")
    assert "AMQP_URL" in sentence
    assert_events_agree(program, result, sentence)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("program", list(PROGRAMS))
def test_unknown_vhost(program: str, broker_url: str, queue_name: str) -> None:
    vhost = f"no-such-vhost-{uuid.uuid4().hex[:8]}"
    url = broker_url_with(broker_url, vhost=vhost)
    result = run_program(program, queue_name, url)
    parts = url_parts(url)
    # The password is checked in URL form when it equals the user name (which may be shown).
    secret = parts.password if parts.password != parts.user else f":{parts.password}@"
    sentence = assert_one_sentence(result, f"no virtual host {vhost!r}", secret)
    assert "add_vhost" in sentence
    assert_events_agree(program, result, sentence)


def management_call(api: ManagementApi, broker_url: str, method: str, path: str, body: object = None) -> None:
    """One write to the management API with the test broker's credentials."""
    parts = url_parts(broker_url)
    token = base64.b64encode(f"{parts.user}:{parts.password}".encode()).decode()
    request = urllib.request.Request(
        f"{api.base}/api{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


@pytest.fixture
def user_without_permissions(broker_url: str, management: ManagementApi | None) -> Iterator[str]:
    """A broker user who may log in but has no permissions on any virtual host; deleted after. Yields its URL."""
    if management is None:
        pytest.skip("needs the management API to create a user")
    name = f"dlab_noperm_{uuid.uuid4().hex[:8]}"
    password = f"Np{uuid.uuid4().hex[:12]}"
    management_call(management, broker_url, "PUT", f"/users/{name}", {"password": password, "tags": ""})
    parts = url_parts(broker_url)
    try:
        yield f"amqp://{name}:{password}@{parts.host}:{parts.port}/{quote(parts.vhost, safe='')}"
    finally:
        management_call(management, broker_url, "DELETE", f"/users/{name}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("program", [*PROGRAMS, "dashboard"])
def test_user_without_permissions_is_told_to_grant_them(
    program: str, user_without_permissions: str, queue_name: str
) -> None:
    """The virtual host exists: the fix is set_permissions, not add_vhost (which the message said)."""
    url = user_without_permissions
    parts = url_parts(url)
    if program == "dashboard":
        result = run_module("tui.cli", ["--broker", "url", "--queue", queue_name], url, timeout=30)
    else:
        result = run_program(program, queue_name, url)
    sentence = assert_one_sentence(result, "no permissions on virtual host", parts.password)
    assert f'rabbitmqctl set_permissions -p {parts.vhost} {parts.user} ".*" ".*" ".*"' in sentence, sentence
    assert "add_vhost" not in sentence, sentence
    assert_events_agree(program, result, sentence)


@pytest.mark.timeout(60)
def test_password_given_in_argv_is_not_echoed(broker_url: str, queue_name: str) -> None:
    url = broker_url_with(broker_url, password="argvPW4567")
    result = run_module("workers.worker", ["--queue", queue_name, "--url", url], None)
    assert result.code != 0 and "Traceback" not in result.output
    assert "argvPW4567" not in result.output
    lines = result.stderr.splitlines()
    assert any("visible in the process list" in line and "AMQP_URL" in line for line in lines), lines
    assert any("refused the login" in line for line in lines), lines


@pytest.fixture
def non_durable_queue(broker_url: str, queue_name: str) -> str:
    """The tutorial's trap: a queue that already exists, declared non-durable."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        connection.channel().queue_declare(queue=queue_name, durable=False)
    finally:
        connection.close()
    return queue_name


@pytest.mark.timeout(60)
@pytest.mark.parametrize("program", list(PROGRAMS))
def test_queue_exists_with_other_arguments(program: str, broker_url: str, non_durable_queue: str) -> None:
    result = run_program(program, non_durable_queue, broker_url)
    secret = url_parts(broker_url).password
    sentence = assert_one_sentence(
        result, f"Queue {non_durable_queue!r} already exists with a different 'durable'", f":{secret}@"
    )
    assert "use another --queue" in sentence and f"delete_queue {non_durable_queue}" in sentence
    assert_events_agree(program, result, sentence)
    # The existing queue was left alone: it still answers a passive declare, with nothing in it.
    wait_figures(broker_url, non_durable_queue, lambda f: f.ready == 0, 5, "the queue intact")


BAD_BODY = b"\xff\xfe bad..."


@pytest.mark.timeout(60)
def test_non_utf8_body_is_done_and_shown_escaped(broker_url: str, queue_name: str, spawn_worker: WorkerFactory) -> None:
    worker = spawn_worker(queue_name, "w1", seconds_per_dot=0.01)
    worker.ready()
    publish_raw(broker_url, queue_name, BAD_BODY, "raw-1")
    [done] = worker.wait_event(Done)
    [received] = worker.of(Received)
    assert received.body == "\\xff\\xfe bad...", "undecodable bytes are shown as escapes"
    assert (received.msg_id, done.msg_id, done.acked) == ("raw-1", "raw-1", True)
    assert worker.stop() == 0
    after = wait_figures(broker_url, queue_name, lambda f: f.consumers == 0, 10, "no consumers")
    assert after.ready == 0, "the task was acked"
    assert worker.bad_lines == [] and "Traceback" not in worker.stderr


@pytest.mark.timeout(60)
def test_non_utf8_body_in_tutorial_output(broker_url: str, queue_name: str, spawn_worker: WorkerFactory) -> None:
    worker = spawn_worker(queue_name, "w1", seconds_per_dot=0.01, events=False)
    worker.wait_line(" [*] Waiting for messages. To exit press CTRL+C")
    publish_raw(broker_url, queue_name, BAD_BODY, "raw-2")
    worker.wait_line(" [x] Done")
    received = [line for line in worker.lines if line.startswith(" [x] Received")]
    assert len(received) == 1
    line = received[0]
    assert line == " [x] Received '\\xff\\xfe bad...'", f"the bytes are shown as escapes, once: {line}"
    assert "\ufffd" not in line
    worker.interrupt()
    assert worker.wait_exit(10) == 0
    after = wait_figures(broker_url, queue_name, lambda f: f.consumers == 0, 10, "no consumers")
    assert after.ready == 0, "the task was acked"
    assert "Traceback" not in worker.stderr


USAGE_ERRORS: list[tuple[str, list[str], str]] = [
    ("workers.worker", ["--prefetch", "-1"], "--prefetch must be between 0 (unlimited) and 65535, not -1."),
    ("workers.worker", ["--prefetch", "70000"], "--prefetch must be between 0 (unlimited) and 65535"),
    ("workers.worker", ["--prefetch", "lots"], "not a whole number: 'lots'"),
    ("workers.worker", ["--ack", "sometimes"], "--ack must be one of manual, auto, none"),
    ("workers.worker", ["--seconds-per-dot", "-1"], "--seconds-per-dot must be 0 or more"),
    ("workers.worker", ["--seconds-per-dot", "nan"], "--seconds-per-dot must be 0 or more"),
    ("workers.new_task", ["--count", "0", "x"], "--count must be between 1 and 10000000, not 0."),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("module", "args", "message"), USAGE_ERRORS)
def test_bad_arguments_are_usage_errors(module: str, args: list[str], message: str) -> None:
    """Refused before any connection: exit 2, the reason on stderr's last line, no traceback."""
    result = run_module(module, args, "amqp://guest:neverUsedPW@127.0.0.1:1/%2F", timeout=20)
    assert result.code == 2, result
    assert "Traceback" not in result.output
    assert message in result.stderr.strip().splitlines()[-1], result.stderr
    assert "neverUsedPW" not in result.output


# ----- a URL whose password holds raw special characters

RAW_PASSWORD = "p@ss:w/rd%"
RAW_URL = f"amqp://u1:{RAW_PASSWORD}@127.0.0.1/"
"""The "/" ends the host part early: urllib read host "ss", port "w", and pika's traceback said so."""

URL_READERS = {
    "dashboard": ["--broker", "url"],
    "worker": ["worker"],
    "new-task": ["new-task", "Hello."],
    "compare": ["compare"],
    "bench": ["bench", "--smoke"],
}


def pieces(secret: str, shortest: int = 3) -> set[str]:
    """Every run of ``shortest`` or more characters of ``secret``."""
    return {secret[i:j] for i in range(len(secret)) for j in range(i + shortest, len(secret) + 1)}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("given", ["--url", "AMQP_URL"])
@pytest.mark.parametrize("program", list(URL_READERS))
def test_raw_special_characters_in_the_password_are_one_line_without_a_piece_of_it(
    program: str, given: str, queue_name: str
) -> None:
    args = URL_READERS[program] + ([] if program == "bench" else ["--queue", queue_name])  # bench has no --queue
    if given == "--url":
        result = run_module("tui.cli", [*args, "--url", RAW_URL], None, timeout=30)
    else:
        result = run_module("tui.cli", args, RAW_URL, timeout=30)
    assert result.code == 2, result
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    assert f"The broker URL in {given} cannot be read" in lines[0] and "percent-encoded" in lines[0], lines[0]
    assert "/ as %2F" in lines[0] and lines[0].endswith("."), lines[0]
    leaked = sorted(p for p in pieces(RAW_PASSWORD) | {"ss:w", "rd%"} if p in result.output)
    assert not leaked, f"pieces of the password in the output: {leaked}\n{result.output}"


# ----- queue names the broker cannot take

QUEUE_READERS = {
    "dashboard": ["--broker", "url"],
    "worker": ["worker"],
    "new-task": ["new-task", "Hello."],
    "compare": ["compare"],
}
BAD_QUEUES = {
    "256 bytes": ("é" * 128, "--queue must be at most 255 bytes in UTF-8 (the broker's limit), not 256."),
    "empty": ("", "--queue must not be empty: the broker would make up a different name for each program"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad", list(BAD_QUEUES))
@pytest.mark.parametrize("program", list(QUEUE_READERS))
def test_queue_names_the_broker_cannot_take_are_usage_errors(program: str, bad: str, broker_url: str) -> None:
    """Checked as the arguments are read: 128 characters are 256 bytes (pika's ShortStringTooLong traceback before)."""
    name, message = BAD_QUEUES[bad]
    result = run_module("tui.cli", [*QUEUE_READERS[program], "--queue", name], broker_url, timeout=30)
    assert result.code == 2, result
    assert "Traceback" not in result.output, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"dispatch-lab{'' if program == 'dashboard' else ' ' + program}: error: argument --queue: ")
    assert message in last, last


@pytest.mark.timeout(60)
def test_a_queue_name_of_255_bytes_is_taken(broker_url: str) -> None:
    head = f"test-{uuid.uuid4().hex[:12]}-"
    name = head + "é" * ((255 - len(head)) // 2) + "x" * ((255 - len(head)) % 2)
    assert len(name.encode()) == 255
    try:
        result = run_module("tui.cli", ["new-task", "--queue", name, "Hello."], broker_url, timeout=30)
        assert result.code == 0 and "Traceback" not in result.output, result
        wait_figures(broker_url, name, lambda f: f.ready == 1, 10, "the task in the queue")
    finally:
        delete_queue(broker_url, name)
