"""The management API is per node or cluster: figures only from the broker the AMQP link reached.

With AMQP on a private node, the default management URL (host:15672) read the
shared broker's figures. One private node serves the module (about 10-15 s to
boot); the shared broker (or the suite's own node) plays the other broker.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import pytest
from rich.console import Console

from tui.engine.backend import Backend, LabConfig
from tui.launch import parse_config, preflight
from tui.model import observations as obs
from tui.model.state import DERIVED_IGNORED, FROM_MANAGEMENT, Model
from tui.view.widgets.queue_panel import _rows as queue_rows
from workers import local_node
from workers.broker import ManagementApi, connect, server_cluster_name
from workers.local_node import LocalNode
from workers.settings import URL_ENV, DispatchMode

pytestmark = pytest.mark.skipif(local_node.rabbitmq_server_path() is None, reason="rabbitmq-server is not installed")


@pytest.fixture(scope="module")
def node() -> Iterator[LocalNode]:
    with LocalNode() as private:
        private.start()
        yield private


@pytest.fixture
def shared_api(management: ManagementApi | None) -> ManagementApi:
    if management is None:
        pytest.skip("no management API on the shared broker to mistake for the private node's")
    return management


def cluster_of(url: str) -> str | None:
    connection = connect(url, name="dispatch-lab test")
    try:
        return server_cluster_name(connection)
    finally:
        connection.close()


def test_an_api_of_another_broker_is_refused_with_a_reason_and_the_same_node_accepted(
    node: LocalNode, shared_api: ManagementApi, broker_url: str
) -> None:
    cluster = cluster_of(node.url)
    assert cluster is not None and cluster.startswith("dlab-"), cluster
    # The private node's AMQP, the shared broker's API: what host:15672 gave before.
    wrong = ManagementApi(node.url, base=shared_api.base)
    assert wrong.check_same_broker(cluster) is False
    assert wrong.refusal is not None
    assert shared_api.describe() in wrong.refusal and repr(cluster) in wrong.refusal
    assert "--management-url" in wrong.refusal and "guest" not in wrong.refusal
    right = ManagementApi(node.url, base=node.management_url)
    assert right.check_same_broker(cluster) is True and right.refusal is None
    # And the other way round: the shared broker's AMQP against the private node's API.
    assert ManagementApi(node.url, base=node.management_url).check_same_broker(cluster_of(broker_url)) is False


def test_the_default_management_url_is_the_private_nodes_own(node: LocalNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dispatch-lab broker`` in another terminal, AMQP_URL pointing at it: not host:15672."""
    monkeypatch.setenv(URL_ENV, node.url)
    config = parse_config([], Console(file=io.StringIO()))
    assert config.management_url == node.management_url
    api = preflight(config, Console(file=io.StringIO()))
    assert api is not None and api.base == node.management_url
    # Any other broker keeps the plain default (host:15672), checked before use.
    monkeypatch.setenv(URL_ENV, "amqp://guest:guest@127.0.0.1:1/%2F")
    assert parse_config([], Console(file=io.StringIO())).management_url is None


def test_the_dashboard_ignores_another_brokers_api_and_says_why(
    node: LocalNode, shared_api: ManagementApi, queue_name: str
) -> None:
    config = LabConfig(url=node.url, queue=queue_name, workers=0, mode=DispatchMode(1, "manual"))
    connection = connect(node.url, name="dispatch-lab test")
    connection.channel().queue_declare(queue=queue_name, durable=True)
    connection.close()
    backend = Backend(config, management=ManagementApi(node.url, base=shared_api.base, timeout=2.0))
    model = Model(queue=queue_name)
    backend.start()
    try:
        deadline = time.monotonic() + 15
        seen: list[obs.Observation] = []
        while not model.queue.mgmt_refused:
            assert time.monotonic() < deadline, f"no refusal reported: {seen[-5:]}"
            items = backend.inbox.drain()
            seen += items
            model.apply_all(items)
            time.sleep(0.05)
        for _ in range(8):  # a few more samples after it: none carries the shared broker's figures
            time.sleep(0.3)
            items = backend.inbox.drain()
            seen += items
            model.apply_all(items)
    finally:
        backend.shutdown()
    samples = [i for i in seen if isinstance(i, obs.QueueSample)]
    assert samples and all(s.unacked is None and s.external is None for s in samples)
    now = max(s.ts for s in samples)
    assert model.unacked(now) == (0, DERIVED_IGNORED)
    rows = {row[0]: row[1:] for row in queue_rows(model, now, False)}
    assert rows["unacked"] == ("0", "bold", "derived; mgmt API ignored")
    assert "ignoring the management API at" in model.queue.mgmt_refused


def test_the_dashboard_uses_the_private_nodes_own_api(node: LocalNode, queue_name: str) -> None:
    config = LabConfig(url=node.url, queue=queue_name, workers=0, mode=DispatchMode(1, "manual"))
    connection = connect(node.url, name="dispatch-lab test")
    channel = connection.channel()
    channel.queue_declare(queue=queue_name, durable=True)
    try:
        backend = Backend(config, management=ManagementApi(node.url, base=node.management_url, timeout=2.0))
        model = Model(queue=queue_name)
        backend.start()
        try:
            deadline = time.monotonic() + 15
            while model.unacked(time.time())[1] != FROM_MANAGEMENT:
                assert time.monotonic() < deadline, "the private node's API figures never came"
                model.apply_all(backend.inbox.drain())
                time.sleep(0.05)
        finally:
            backend.shutdown()
        assert not model.queue.mgmt_refused
    finally:
        channel.queue_delete(queue_name)
        connection.close()
