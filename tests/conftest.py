"""Provides the broker, unique queues and worker subprocesses to the tests, cleaned up even on failure."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence

import pika
import pika.exceptions
import pytest

from tests.helpers import SPAWNED, WorkerProc, delete_queue
from workers.broker import ManagementApi
from workers.settings import URL_ENV

LOCAL_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
_private_management_url: str | None = None
"""The management API of the private node the session booted, if it booted one."""


def broker_reachable(url: str) -> bool:
    """True when an AMQP login to ``url`` succeeds."""
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 3
    try:
        pika.BlockingConnection(params).close()
    except (pika.exceptions.AMQPError, OSError):
        return False
    return True


def find_or_start_broker() -> str | None:
    """The URL of a broker the tests may use: AMQP_URL, else the local default, else a private node.

    With no AMQP_URL and nothing answering on 127.0.0.1:5672, a private node
    (workers.local_node) is booted for the session when rabbitmq-server is
    installed; it is destroyed when pytest exits (LocalNode registers destroy()
    with atexit, and the node halts by itself if pytest is killed). An AMQP_URL
    that does not answer is a mistake to report, not to paper over: None.
    """
    import warnings

    from workers.local_node import LocalNode, LocalNodeError, rabbitmq_server_path

    chosen = os.environ.get(URL_ENV)
    url = chosen or LOCAL_URL
    if broker_reachable(url):
        return url
    if chosen or rabbitmq_server_path() is None:
        return None
    node = LocalNode()
    try:
        url = node.start()
        global _private_management_url
        _private_management_url = node.management_url
        return url
    except LocalNodeError as exc:
        node.destroy()
        warnings.warn(f"no private RabbitMQ node for the tests: {exc}", stacklevel=1)
        return None


@pytest.fixture(scope="session")
def broker_url() -> str:
    url = find_or_start_broker()
    if url is None:
        pytest.skip("no RabbitMQ broker reachable (set AMQP_URL or run one on 127.0.0.1:5672)")
    return url


@pytest.fixture(scope="session")
def management(broker_url: str) -> ManagementApi | None:
    """The management API when the plugin answers, else None (tests then deduce from AMQP)."""
    api = ManagementApi(broker_url, base=_private_management_url, timeout=2.0)
    return api if api.consumers("-") is not None else None


@pytest.fixture
def queue_factory(broker_url: str) -> Iterator[Callable[[], str]]:
    """Makes unique queue names; every queue named is deleted afterwards, pass or fail."""
    names: list[str] = []

    def new_queue() -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        names.append(name)
        return name

    yield new_queue
    for name in names:
        delete_queue(broker_url, name)


@pytest.fixture
def queue_name(queue_factory: Callable[[], str]) -> str:
    return queue_factory()


WorkerFactory = Callable[..., WorkerProc]


@pytest.fixture
def spawn_worker(broker_url: str, queue_factory: Callable[[], str]) -> Iterator[WorkerFactory]:
    """Starts worker subprocesses; all are killed and reaped before the queues are deleted."""
    started: list[WorkerProc] = []

    def spawn(
        queue: str,
        name: str,
        *,
        prefetch: int = 1,
        ack: str = "manual",
        seconds_per_dot: float = 0.05,
        events: bool = True,
        extra_args: Sequence[str] = (),
    ) -> WorkerProc:
        worker = WorkerProc(
            broker_url,
            queue,
            name,
            prefetch=prefetch,
            ack=ack,
            seconds_per_dot=seconds_per_dot,
            events=events,
            extra_args=extra_args,
        )
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.close()


@pytest.fixture(scope="session", autouse=True)
def no_orphans() -> Iterator[None]:
    """Every child process the suite started has exited by the end of the session."""
    yield
    alive = [proc.pid for proc in SPAWNED if proc.poll() is None]
    for proc in SPAWNED:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert not alive, f"child processes outlived their tests: {alive}"


LONGEST_FIRST = (
    "test_teaching.py",
    "test_chaos.py",
    "test_app.py",
    "test_hostile_text.py",
    "test_worker.py",
    "test_bench_smoke.py",
    "test_broker_steps.py",
    "test_broker_alarm.py",
    "test_other_consumers.py",
)
"""The files that take longest (30-80 s each, measured): run first, so that with ``make test``'s two processes,
a file at a time each, none is left running alone at the end (the 80 s lesson file did, last, in a 4:59 run)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order
    if os.environ.get("DISPATCH_LAB_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set DISPATCH_LAB_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
