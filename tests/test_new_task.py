"""Tests the publisher and the tutorial's words on both sides: new_task sends, worker receives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pika
import pytest

from tests.conftest import WorkerFactory
from tests.helpers import ROOT, CliResult, child_env, figures, publish, ready_count, run_module, wait_figures
from workers.new_task import Publisher, build_parser

pytestmark = pytest.mark.broker


def get_all(url: str, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Every ready message's properties and body, left in the queue (not acked)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        found: list[tuple[pika.BasicProperties, bytes]] = []
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                return found
            found.append((properties, body))
    finally:
        connection.close()  # the unacked gets go back to the queue


@pytest.mark.timeout(60)
def test_tutorial_words_on_both_sides(broker_url: str, queue_name: str, spawn_worker: WorkerFactory) -> None:
    worker = spawn_worker(queue_name, "w1", seconds_per_dot=0.05, events=False)
    worker.wait_line(" [*] Waiting for messages. To exit press CTRL+C")

    sent = run_module("workers.new_task", ["--queue", queue_name, "First", "message."], broker_url)
    assert sent.code == 0, sent
    assert sent.stdout == " [x] Sent 'First message.'\n"
    assert sent.stderr == ""

    worker.wait_line(" [x] Done")
    assert worker.lines == [
        " [*] Waiting for messages. To exit press CTRL+C",
        " [x] Received 'First message.'",
        " [x] Done",
    ]
    worker.interrupt()  # CTRL+C
    assert worker.wait_exit(10) == 0
    assert "Traceback" not in worker.stderr, worker.stderr
    after = wait_figures(broker_url, queue_name, lambda f: f.consumers == 0, 10, "no consumers")
    assert after.ready == 0


@pytest.mark.timeout(60)
def test_default_message_count_and_properties(broker_url: str, queue_name: str) -> None:
    result = run_module("workers.new_task", ["--queue", queue_name, "--count", "3"], broker_url)
    assert result.code == 0, result
    # The tutorial's "Hello World!" without its '!', which makes a task fail in the lab.
    assert result.stdout.splitlines() == [" [x] Sent 'Hello World'"] * 3
    messages = get_all(broker_url, queue_name)
    assert [body for _, body in messages] == [b"Hello World"] * 3
    ids = [props.message_id for props, _ in messages]
    assert len(set(ids)) == 3 and all(ids), ids
    prefix = {str(i).rsplit("-", 1)[0] for i in ids}
    assert len(prefix) == 1, "one run, one id prefix"
    assert [str(i).rsplit("-", 1)[1] for i in ids] == ["1", "2", "3"]
    assert all(props.delivery_mode == 2 for props, _ in messages), "persistent, as the tutorial asks"
    assert ready_count(broker_url, queue_name) == 3, "inspecting left them in the queue"


@pytest.mark.timeout(60)
def test_large_count_prints_one_summary(broker_url: str, queue_name: str) -> None:
    result = run_module("workers.new_task", ["--queue", queue_name, "--count", "25", "tick."], broker_url)
    assert result.code == 0, result
    assert result.stdout == " [x] Sent 'tick.' x25\n"
    assert ready_count(broker_url, queue_name) == 25


@pytest.mark.timeout(60)
def test_two_runs_never_share_message_ids(broker_url: str, queue_name: str) -> None:
    first = publish(broker_url, queue_name, ["a", "b"])
    second = publish(broker_url, queue_name, ["a", "b"])
    assert len(set(first + second)) == 4


@pytest.mark.timeout(60)
def test_publisher_keeps_explicit_ids_and_raw_bytes(broker_url: str, queue_name: str) -> None:
    with Publisher(broker_url, queue_name, prefix="fixed") as publisher:
        assert publisher.next_id() == "fixed-1"
        assert publisher.publish(b"\x00\x01 raw", msg_id="mine") == "mine"
        assert publisher.publish("text") == "fixed-2"
    [(props_a, body_a), (props_b, body_b)] = get_all(broker_url, queue_name)
    assert (props_a.message_id, body_a) == ("mine", b"\x00\x01 raw")
    assert (props_b.message_id, body_b) == ("fixed-2", b"text")


@pytest.mark.timeout(60)
def test_transient_publisher_on_durable_queue_explains(broker_url: str, queue_name: str) -> None:
    publish(broker_url, queue_name, ["durable first"])
    result = run_module("workers.new_task", ["--queue", queue_name, "--transient", "x"], broker_url)
    assert result.code == 1
    assert "Traceback" not in result.output
    assert f"Queue {queue_name!r} already exists with a different 'durable'" in result.stderr
    assert ready_count(broker_url, queue_name) == 1, "nothing was published"


# ----- a task from standard input or a file


def new_task(args: list[str], url: str, stdin: bytes = b"") -> CliResult:
    """Run new_task with ``stdin`` as its standard input."""
    done = subprocess.run(
        [sys.executable, "-u", "-m", "workers.new_task", *args],
        cwd=ROOT, env=child_env(url), input=stdin, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    return CliResult(done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"))


@pytest.mark.timeout(60)
def test_a_task_from_standard_input_is_sent_byte_for_byte(broker_url: str, queue_name: str) -> None:
    """Bigger than argv takes in one word (128 KiB), with a byte that is not UTF-8 and the trailing newline."""
    body = b"Big task..." + b"x" * 200_000 + b"\xff\n"
    result = new_task(["--queue", queue_name, "--count", "2", "-"], broker_url, body)
    assert result.code == 0, result
    assert result.stdout == f" [x] Sent {'Big task...' + 'x' * 29!r}… (200,013 bytes)\n" * 2, result.stdout
    assert result.stderr == ""
    assert [b for _, b in get_all(broker_url, queue_name)] == [body, body]


@pytest.mark.timeout(60)
def test_a_task_from_a_file_is_sent_byte_for_byte(broker_url: str, queue_name: str, tmp_path: Path) -> None:
    task = tmp_path / "task.txt"
    task.write_bytes(b"Hello...\n")
    result = new_task(["--queue", queue_name, "--file", str(task)], broker_url)
    assert (result.code, result.stdout, result.stderr) == (0, " [x] Sent 'Hello...\\n'\n", ""), result
    [(properties, body)] = get_all(broker_url, queue_name)
    assert body == b"Hello...\n" and properties.message_id


BAD_BODIES = [
    (["--file", "/nonexistent/t"], b"", 1, "cannot read the task from /nonexistent/t: No such file or directory."),
    (["-"], b"", 1, "the task from standard input is empty: nothing was sent."),
    (["--file", "/etc/hostname", "Hello."], b"", 2,
     "give the task as words, as '-' (standard input) or as --file PATH, not both."),
]  # fmt: skip


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("args", "stdin", "code", "sentence"), BAD_BODIES, ids=["missing file", "empty stdin", "both"])
def test_a_task_that_cannot_be_read_is_one_sentence_and_nothing_is_sent(
    broker_url: str, queue_name: str, args: list[str], stdin: bytes, code: int, sentence: str
) -> None:
    result = new_task(["--queue", queue_name, *args], broker_url, stdin)
    assert (result.code, result.stdout, result.stderr) == (code, "", f"new_task: {sentence}\n"), result
    assert figures(broker_url, queue_name) is None, "not even the queue was declared"


def test_help_names_the_body_sources_and_the_timeout_default() -> None:
    text = build_parser().format_help()
    flat = " ".join(text.split())
    assert "'-' reads it from stdin" in flat
    assert "--file PATH read the task from this file" in flat
    assert "--timeout SECONDS how long a task waits while the broker blocks publishers (default 30;" in flat
    assert "may still be delivered once the alarm clears" in flat
