"""Tests for the private RabbitMQ node: real nodes, booted as few times as possible.

One node serves the module; the tests that need another (ports side by side,
the CLI, a killed parent) boot their own. The whole file takes about 35 s on
2 cores; every test that needs rabbitmq-server skips when it is not installed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest

from tests.helpers import ROOT, wait_until
from workers import local_node
from workers.local_node import LocalNode, LocalNodeError, install_signal_cleanup, port_open

needs_rabbitmq = pytest.mark.skipif(
    local_node.rabbitmq_server_path() is None, reason="rabbitmq-server is not installed"
)


def processes_of(node_name: str) -> list[int]:
    """What ``pgrep -f <node name>`` finds (the /proc scan where pgrep is missing)."""
    if shutil.which("pgrep") is None:
        return local_node.node_pids(node_name)
    found = subprocess.run(["pgrep", "-f", node_name], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


def overview(node: LocalNode) -> dict[str, object]:
    token = base64.b64encode(b"guest:guest").decode()
    request = urllib.request.Request(node.management_url + "/api/overview", headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        data = json.loads(response.read())
    assert isinstance(data, dict)
    return data


def queue_exists(url: str, queue: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(queue=queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return False
    finally:
        connection.close()
    return True


class Booted:
    """The module's node and what its first start reported."""

    def __init__(self, node: LocalNode, phases: list[str], seconds: float) -> None:
        self.node = node
        self.phases = phases
        self.seconds = seconds


@pytest.fixture(scope="module")
def booted() -> Iterator[Booted]:
    node = LocalNode()
    phases: list[str] = []
    began = time.monotonic()
    node.start(phases.append)
    seconds = time.monotonic() - began
    print(f"\nprivate node booted (AMQP connectable) in {seconds:.1f} s")
    yield Booted(node, phases, seconds)
    node.destroy()


# ----- no node needed


def test_port_open_tells_a_listening_port_from_a_closed_one() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_open("127.0.0.1", port)
    assert not port_open("127.0.0.1", port)


def test_a_second_node_gets_other_ports_and_name() -> None:
    first, second = LocalNode(), LocalNode()
    try:
        ports = {first.amqp_port, first.management_port, first.dist_port}
        assert len(ports) == 3
        assert ports.isdisjoint({second.amqp_port, second.management_port, second.dist_port})
        assert first.node_name != second.node_name
        assert first.dir != second.dir
        assert first.url == f"amqp://guest:guest@127.0.0.1:{first.amqp_port}/%2F"
        assert first.management_url == f"http://127.0.0.1:{first.management_port}"
    finally:
        first.destroy()
        second.destroy()
    assert not first.dir.exists() and not second.dir.exists()


def test_missing_rabbitmq_server_is_one_sentence_naming_both_fixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_node, "rabbitmq_server_path", lambda: None)
    node = LocalNode()
    try:
        with pytest.raises(LocalNodeError) as caught:
            node.start()
    finally:
        node.destroy()
    message = str(caught.value)
    assert "apt-get install rabbitmq-server" in message
    assert "docker compose up -d" in message
    assert message.count(".") == 1 and "\n" not in message


def test_signal_cleanup_destroys_the_node_then_exits() -> None:
    node = LocalNode()
    before = signal.getsignal(signal.SIGTERM)
    try:
        install_signal_cleanup(node, signals=(signal.SIGTERM,))
        with pytest.raises(SystemExit) as caught:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs before this returns
    finally:
        signal.signal(signal.SIGTERM, before)
    assert caught.value.code == 128 + signal.SIGTERM
    assert not node.dir.exists()


# ----- one node for the module


@needs_rabbitmq
def test_start_reports_phases_until_amqp_works(booted: Booted) -> None:
    phases = booted.phases
    assert phases[0] == "booting Erlang VM"
    assert phases.index("waiting for AMQP port") < phases.index("opening an AMQP connection")
    assert phases[-1] == "waiting for the management API"
    assert booted.seconds < 90


@needs_rabbitmq
def test_the_node_speaks_amqp_and_management_as_itself(booted: Booted) -> None:
    node = booted.node
    connection = pika.BlockingConnection(pika.URLParameters(node.url))
    assert connection.is_open
    connection.close()
    # the management API on the node's own port is this node, not a system broker
    assert overview(node)["node"] == node.node_name
    assert processes_of(node.node_name) == [node_pid(node)]


def node_pid(node: LocalNode) -> int:
    pid_file = node.dir / "rabbitmq.pid"
    return int(pid_file.read_text().strip())


@needs_rabbitmq
def test_durable_persistent_message_survives_restart_transient_queue_does_not(booted: Booted) -> None:
    node = booted.node
    connection = pika.BlockingConnection(pika.URLParameters(node.url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue="kept", durable=True)
    channel.basic_publish(
        exchange="",
        routing_key="kept",
        body=b"still here",
        properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
    )
    channel.queue_declare(queue="gone", durable=False)
    channel.basic_publish(exchange="", routing_key="gone", body=b"lost")
    connection.close()
    old_pid = node_pid(node)

    began = time.monotonic()
    node.restart()
    print(f"\nprivate node restarted (stop + boot) in {time.monotonic() - began:.1f} s")

    assert node_pid(node) != old_pid
    assert processes_of(node.node_name) == [node_pid(node)]
    connection = pika.BlockingConnection(pika.URLParameters(node.url))
    method, _properties, body = connection.channel().basic_get("kept", auto_ack=True)
    connection.close()
    assert method is not None and body == b"still here"
    assert not queue_exists(node.url, "gone")


@needs_rabbitmq
def test_boot_timeout_names_a_saved_log_and_leaves_no_process() -> None:
    node = LocalNode()
    try:
        with pytest.raises(LocalNodeError) as caught:
            node.start(timeout=0.3)
        assert not node.running
        assert processes_of(node.node_name) == []
    finally:
        node.destroy()
    message = str(caught.value)
    assert "did not finish booting within 0.3 s" in message
    saved = Path(message.split("tail -n 40 ")[1].rstrip("`."))
    assert saved.exists()
    saved.unlink()


# ----- nodes of their own


@needs_rabbitmq
def test_two_nodes_run_side_by_side_and_destroy_leaves_nothing(booted: Booted) -> None:
    with LocalNode(management=False) as second:
        assert second.amqp_port != booted.node.amqp_port
        pika.BlockingConnection(pika.URLParameters(second.url)).close()
        assert not port_open("127.0.0.1", second.management_port)
    assert not second.dir.exists()
    assert processes_of(second.node_name) == []
    second.destroy()  # twice is fine
    pika.BlockingConnection(pika.URLParameters(booted.node.url)).close()


@needs_rabbitmq
def test_cli_node_serves_until_its_parent_dies_even_by_sigkill() -> None:
    """`dispatch-lab broker` prints a usable URL; killing it hard still halts the node."""
    cli = subprocess.Popen(
        [sys.executable, "-m", "tui", "broker", "--no-management"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    data_dir: Path | None = None
    try:
        assert cli.stdout is not None
        fields: dict[str, str] = {}
        for line in cli.stdout:
            if line.startswith("RabbitMQ node "):
                fields["node"] = line.split()[2]
            key, _, value = line.strip().partition(":")
            fields.setdefault(key, value.strip())
            if line.startswith("Ctrl+C"):
                break
        url, data_dir, node_name = fields["AMQP"], Path(fields["data"]), fields["node"]
        pika.BlockingConnection(pika.URLParameters(url)).close()
        assert processes_of(node_name)

        cli.kill()
        cli.wait(10)
        wait_until(lambda: not processes_of(node_name), 10, "the orphaned node to halt")
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)  # SIGKILL gave atexit no chance


def test_an_ack_timeout_goes_into_the_nodes_config_with_a_tick_to_check_it() -> None:
    """``ack_timeout`` is consumer_timeout in rabbitmq.conf (ms); the channel tick in advanced.config."""
    node = LocalNode(ack_timeout=2.5)
    try:
        assert "consumer_timeout = 2500\n" in (node.dir / "rabbitmq.conf").read_text()
        assert (node.dir / "advanced.config").read_text() == "[{rabbit, [{channel_tick_interval, 625}]}].\n"
    finally:
        node.destroy()
    node = LocalNode(ack_timeout=600, channel_tick=0.25)
    try:
        assert "consumer_timeout = 600000\n" in (node.dir / "rabbitmq.conf").read_text()
        assert "{channel_tick_interval, 250}" in (node.dir / "advanced.config").read_text()
    finally:
        node.destroy()
    slow = LocalNode(ack_timeout=3600)
    slow.destroy()
    assert slow.channel_tick_ms == 60_000, "never slower than RabbitMQ's own default"
    plain = LocalNode()
    try:
        assert "consumer_timeout" not in (plain.dir / "rabbitmq.conf").read_text()
        assert not (plain.dir / "advanced.config").exists(), "the broker's defaults when not asked"
    finally:
        plain.destroy()
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ack_timeout"):
            LocalNode(ack_timeout=bad)


def test_free_ports_stay_out_of_the_range_outgoing_connections_draw_from() -> None:
    """A port from that range was taken by another test process's connection before a node could listen on it."""
    low, _high = local_node.ephemeral_ports()
    ports = local_node.free_ports(3)
    assert len(set(ports)) == 3 and all(local_node.LOWEST_PORT <= port < low for port in ports), (ports, low)
    for port in ports:
        with socket.socket() as sock:
            sock.bind((local_node.HOST, port))  # free, as promised
