"""Provides broker connections with one-sentence errors, queue declaration and queue figures."""

from __future__ import annotations

import base64
import json
import re
import shlex
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectorException, AMQPConnectorStackTimeout

from workers.settings import QueueSpec, mask_url, scrub, url_parts

FIX_HINT = "start one with `docker compose up -d` or install the rabbitmq-server package"


class BrokerError(Exception):
    """A broker problem a user can cause or fix; ``str()`` is one sentence without secrets.

    ``transient`` is True when trying again later may work (nothing listening yet,
    a restart in progress), False for a mistake in the settings (login, vhost, host name).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


BLOCKED_TIMEOUT = 30.0
"""Seconds pika lets a connection stay blocked by a broker alarm before it drops it (ConnectionBlockedTimeout)."""


def connection_parameters(
    url: str, *, name: str, heartbeat: int | None = None, blocked_timeout: float | None = BLOCKED_TIMEOUT
) -> pika.URLParameters:
    """pika parameters for a URL, named so the management UI can tell our connections apart.

    ``blocked_timeout`` None lets a publisher wait out a memory or disk alarm for as long as it lasts.
    """
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": name, "product": "dispatch-lab"}
    params.blocked_connection_timeout = blocked_timeout
    params.connection_attempts = 1
    params.socket_timeout = 5
    if heartbeat is not None:
        params.heartbeat = heartbeat
    return params


def describe_connect_error(exc: BaseException, url: str) -> str:
    """One sentence for a failed connection attempt, naming the fix."""
    parts = url_parts(url)
    where = f"{parts.host}:{parts.port}"
    if isinstance(exc, (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)):
        return (
            f"The broker at {where} refused the login for user {parts.user!r}: "
            "wrong user name or password (check --url or AMQP_URL)."
        )
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        # The broker's reason tells the two apart: "access to vhost '/' refused for user 'u1'"
        # (it exists, the user has no permissions there) or "vhost v1 not found".
        grant = f'rabbitmqctl set_permissions -p {shlex.quote(parts.vhost)} {shlex.quote(parts.user)} ".*" ".*" ".*"'
        reason = str(exc)
        if "refused for user" in reason:
            return (
                f"The broker at {where} let user {parts.user!r} log in but gives it no permissions on "
                f"virtual host {parts.vhost!r}: grant them with `{grant}`."
            )
        if "not found" in reason:
            return (
                f"The broker at {where} has no virtual host {parts.vhost!r}: "
                "create it (rabbitmqctl add_vhost) or fix the URL's path."
            )
        return (
            f"The broker at {where} has no virtual host {parts.vhost!r} that user {parts.user!r} may use: "
            f"create it (rabbitmqctl add_vhost), grant permissions (`{grant}`) or fix the URL's path."
        )
    if isinstance(exc, socket.gaierror):
        return f"Cannot resolve the broker host {parts.host!r}: check --url or AMQP_URL."
    if isinstance(exc, (pika.exceptions.IncompatibleProtocolError, AMQPConnectorStackTimeout)):
        return f"{where} does not speak AMQP 0-9-1: is that port a RabbitMQ broker?"
    text = repr(exc.args[0]) if exc.args else repr(exc)
    if "Refused" in text or "refused" in text:
        return f"Cannot reach a RabbitMQ broker at {where} (connection refused): {FIX_HINT}."
    if "timed out" in text.lower() or "Timeout" in text:
        return f"Cannot reach a RabbitMQ broker at {where} (timed out): check the host and firewall."
    return f"Cannot connect to the broker at {where}: {scrub(str(exc) or type(exc).__name__, url)}."


def connect(
    url: str, *, name: str, heartbeat: int | None = None, blocked_timeout: float | None = BLOCKED_TIMEOUT
) -> pika.BlockingConnection:
    """A BlockingConnection, or BrokerError with a sentence that names the fix."""
    try:
        return pika.BlockingConnection(
            connection_parameters(url, name=name, heartbeat=heartbeat, blocked_timeout=blocked_timeout)
        )
    except (pika.exceptions.AMQPError, OSError, AMQPConnectorException) as exc:
        # AMQPConnectorStackTimeout (a port that accepts but never speaks AMQP) is not an AMQPError.
        mistake = isinstance(
            exc,
            (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError,
             pika.exceptions.ProbableAccessDeniedError, socket.gaierror),
        )  # fmt: skip
        raise BrokerError(describe_connect_error(exc, url), transient=not mistake) from None


def close_quietly(connection: pika.BlockingConnection) -> None:
    """Close a connection on the way out, whatever state it is in: a failure to close says nothing new."""
    try:
        if connection.is_open:
            connection.close()
    except Exception:
        pass


RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0)
"""Seconds between tries to reach the broker again: the first soon, then no faster than every 5 s."""


def routing_key(queue: str, name: str) -> str:
    """A worker's key on the lab's topic exchanges (its reports, its commands): ``<queue>.<worker name>``."""
    return f"{queue}.{name}"


def declare_topic_exchange(channel: Any, exchange: str) -> None:
    """The lab's telemetry and control exchanges: topic, not durable (for whoever listens now)."""
    channel.exchange_declare(exchange, exchange_type="topic", durable=False)


class Subscription:
    """A thread that keeps an exclusive, auto-delete queue bound to ``key`` on a topic exchange.

    Each message goes to ``deliver(method, properties, body)`` on that thread. It reconnects
    with backoff when the broker goes away; what is sent meanwhile is not kept for it. ``say``
    hears ``("paused", why)`` when it first cannot connect, ``("bound", "")`` once bound (again
    after each reconnect) and ``("lost", why)`` when the connection is lost (no password in ``why``).
    """

    def __init__(
        self,
        url: str,
        exchange: str,
        key: str,
        deliver: Callable[[Any, Any, bytes], None],
        *,
        connection_name: str,
        thread_name: str,
        say: Callable[[str, str], None] | None = None,
    ) -> None:
        self.url = url
        self.exchange = exchange
        self.key = key
        self.deliver = deliver
        self.connection_name = connection_name
        self.thread_name = thread_name
        self.say = say
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: pika.BlockingConnection | None = None
        """While bound: the thread's connection, which ``stop`` wakes (its only thread-safe call)."""
        self.bound = threading.Event()
        """Set while the queue is bound: messages published from then on reach it."""
        self.native_id: int | None = None
        """The thread's id for the OS, once it runs (a benchmark reads its CPU time)."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        connection = self._connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(_nothing)  # wakes its wait, which then sees the stop
            except Exception:
                pass  # closed meanwhile: the thread is on its way out
        if self._thread is not None:
            self._thread.join(timeout)

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self.deliver(method, properties, body)

    def _run(self) -> None:
        self.native_id = threading.get_native_id()
        attempt = 0
        while not self._stop.is_set():
            try:
                connection = connect(self.url, name=self.connection_name)
            except BrokerError as exc:
                if attempt == 0 and self.say is not None:
                    self.say("paused", str(exc))
                self._stop.wait(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
                attempt += 1
                continue
            attempt = 0
            try:
                channel = connection.channel()
                declare_topic_exchange(channel, self.exchange)
                name = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
                channel.queue_bind(name, self.exchange, routing_key=self.key)
                channel.basic_consume(name, self._on_message, auto_ack=True)
                self.bound.set()
                if self.say is not None:
                    self.say("bound", "")
                self._connection = connection
                while not self._stop.is_set():
                    # Until a message (or ``stop``): no wake-up to look at a flag. Polling every
                    # 0.2 s was 0.07 context switches a task in each of 50 busy workers on 2 cores.
                    connection.process_data_events(time_limit=None)
            except (pika.exceptions.AMQPError, OSError) as exc:
                if self.say is not None:
                    self.say("lost", scrub(str(exc), self.url))
                self._stop.wait(0.5)  # the broker went away: reconnect
            finally:
                self._connection = None
                self.bound.clear()
                close_quietly(connection)


def _nothing() -> None:
    """A callback that only wakes a connection's ``process_data_events``."""


_INEQUIVALENT = re.compile(r"inequivalent arg '(?P<arg>[^']+)'.*?: received (?P<got>.+?) but current is (?P<cur>.+)$")


def explain_channel_error(exc: pika.exceptions.ChannelClosedByBroker, queue: str) -> str:
    """One sentence for a channel the broker closed while we used ``queue``."""
    if exc.reply_code == 406:
        match = _INEQUIVALENT.search(exc.reply_text)
        if match:
            arg = match["arg"]
            flag = _FLAG_FOR_ARG.get(arg)
            hint = f" (set by {flag})" if flag else ""
            return (
                f"Queue {queue!r} already exists with a different {arg!r}{hint} "
                f"(we asked for {_arg_value(match['got'])}, the broker has {_arg_value(match['cur'])}): "
                f"ask for what it has, use another --queue, or delete it with `rabbitmqctl delete_queue {queue}` "
                "if its messages may go."
            )
        return f"The broker refused queue {queue!r}: {exc.reply_text}."
    if exc.reply_code == 404:
        return f"Queue {queue!r} does not exist on this broker."
    if exc.reply_code == 403:
        return f"Access to queue {queue!r} was refused: {exc.reply_text}."
    return f"The broker closed the channel on queue {queue!r}: ({exc.reply_code}) {exc.reply_text}."


_FLAG_FOR_ARG = {
    "durable": "--transient",
    "x-queue-type": "--queue-type",
    "x-delivery-limit": "--delivery-limit",
    "x-dead-letter-exchange": "--dead-letter",
    "x-dead-letter-routing-key": "--dead-letter",
}
_TYPED_VALUE = re.compile(r"^the value (?P<value>'.*') of type '[^']*'$")


def _arg_value(text: str) -> str:
    """The broker's words for an argument's value, shorter: ``the value 'quorum' of type 'longstr'`` -> 'quorum'."""
    text = text.strip()
    if text == "none":
        return "none set"
    match = _TYPED_VALUE.match(text)
    value = match["value"] if match else text
    return "'' (the default exchange)" if value == "''" else value


def declare_task_queue(channel: Any, queue: str, *, durable: bool = True, spec: QueueSpec | None = None) -> int:
    """Declare the work queue (durable by default, or as ``spec`` says); returns its ready count.

    With a dead-letter queue in the spec, ``<queue>.dead`` is declared first (a classic
    queue, as durable as the work queue), so nothing dead-lettered is dropped for want of it.
    """
    spec = QueueSpec(durable=durable) if spec is None else spec
    dead = spec.dead_letter_queue(queue)
    try:
        if dead is not None:
            channel.queue_declare(queue=dead, durable=spec.durable)
        result = channel.queue_declare(queue=queue, durable=spec.durable, arguments=spec.arguments(queue) or None)
    except pika.exceptions.ChannelClosedByBroker as exc:
        which = dead if dead is not None and f"queue '{dead}'" in str(exc.reply_text) else queue
        raise BrokerError(explain_channel_error(exc, which)) from None
    return int(result.method.message_count)


def server_version(connection: pika.BlockingConnection) -> str | None:
    """The broker's version as it announced it in connection.start (``3.10.8``), or None."""
    properties = getattr(getattr(connection, "_impl", None), "server_properties", None) or {}
    version = properties.get("version")
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    return version if isinstance(version, str) and version else None


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """What a passive declare tells: ready messages (never unacked) and consumers."""

    ready: int
    consumers: int


def probe_queue(connection: pika.BlockingConnection, queue: str) -> QueueFigures | None:
    """Figures for ``queue`` from a passive declare, or None when it does not exist.

    A passive declare of a missing queue closes its channel (404), so each probe
    that may miss uses a fresh channel; callers keep one for the common case.
    """
    channel = connection.channel()
    try:
        result = channel.queue_declare(queue=queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return None
        raise BrokerError(explain_channel_error(exc, queue)) from None
    figures = QueueFigures(int(result.method.message_count), int(result.method.consumer_count))
    channel.close()
    return figures


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """One consumer on a queue as the management API reports it."""

    connection_name: str
    channel: str
    prefetch: int
    ack_required: bool
    unacked: int
    delivered: int | None = None
    """The channel's ``message_stats.deliver_get``: every delivery (and get) it has had; None before its
    first stats (the broker emits them every 5 s). A channel's totals: all the queues it consumes from."""
    acked: int | None = None
    """The channel's ``message_stats.ack``: deliveries it acknowledged."""


def server_cluster_name(connection: pika.BlockingConnection) -> str | None:
    """The cluster name the broker announced when the AMQP connection opened (RabbitMQ sends it)."""
    # pika keeps connection.start's server_properties on the adapter's connection, not on BlockingConnection.
    properties = getattr(getattr(connection, "_impl", None), "server_properties", None) or {}
    name = properties.get("cluster_name")
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return name if isinstance(name, str) and name else None


class ManagementApi:
    """The management plugin's HTTP API, used read-only with the AMQP URL's credentials.

    The API is per node or cluster, and a default (``host:15672``) can be another
    broker than the one the AMQP URL reaches (a private node on another port, a
    tunnel): ``check_same_broker`` compares names before anyone shows its figures.
    """

    def __init__(self, url: str, *, base: str | None = None, timeout: float = 1.0) -> None:
        parts = url_parts(url)
        self.base = (base or f"http://{parts.host}:15672").rstrip("/")
        self.vhost = parts.vhost
        self.timeout = timeout
        token = base64.b64encode(f"{parts.user}:{parts.password}".encode()).decode()
        self._auth = f"Basic {token}"
        self._url = url
        self.refusal: str | None = None
        """Why this API's figures are ignored (another broker, or one we cannot check), or None."""
        self.checked: str | None = None
        """The AMQP cluster name the API was last checked against (None: not checked yet)."""

    def _get(self, path: str) -> Any:
        import urllib.request  # here, not at the top: ~15 ms of every worker's start-up, for the dashboard only

        request = urllib.request.Request(self.base + path, headers={"Authorization": self._auth})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())

    def queue(self, queue: str) -> dict[str, Any] | None:
        """The queue's JSON (messages_ready, messages_unacknowledged, ...), or None if unreachable."""
        path = f"/api/queues/{quote(self.vhost, safe='')}/{quote(queue, safe='')}"
        try:
            data = self._get(path)
        except (OSError, ValueError):  # URLError is an OSError
            return None
        return data if isinstance(data, dict) else None

    def queue_names(self) -> list[str] | None:
        """The names of the vhost's queues, or None if unreachable."""
        try:
            data = self._get(f"/api/queues/{quote(self.vhost, safe='')}?columns=name")
        except (OSError, ValueError):  # URLError is an OSError
            return None
        return [str(item.get("name")) for item in data if isinstance(item, dict)] if isinstance(data, list) else None

    def consumers(self, queue: str) -> list[ConsumerInfo] | None:
        """The queue's consumers with their channel's unacked count, or None if unreachable.

        ``connection_name`` is the name the client gave its connection (ours say
        ``dispatch-lab w1 (pid 123)``), else the broker's ``host:port -> host:port``.
        """
        vhost = quote(self.vhost, safe="")
        try:
            consumers = self._get(f"/api/consumers/{vhost}")
            channels = self._get(
                f"/api/vhosts/{vhost}/channels"
                "?columns=name,messages_unacknowledged,message_stats.deliver_get,message_stats.ack"
            )
            connections = self._get(f"/api/vhosts/{vhost}/connections?columns=name,user_provided_name")
        except (OSError, ValueError):  # URLError is an OSError
            return None
        unacked = {c.get("name"): int(c.get("messages_unacknowledged") or 0) for c in channels}
        # An idle channel's message_stats is an empty list, not an object.
        stats = {c.get("name"): c.get("message_stats") for c in channels if isinstance(c.get("message_stats"), dict)}
        named = {c.get("name"): c.get("user_provided_name") for c in connections}
        found: list[ConsumerInfo] = []
        for item in consumers:
            if (item.get("queue") or {}).get("name") != queue:
                continue
            details = item.get("channel_details") or {}
            connection = details.get("connection_name") or "?"
            counts = stats.get(details.get("name")) or {}
            found.append(
                ConsumerInfo(
                    connection_name=str(named.get(connection) or connection),
                    channel=str(details.get("name") or "?"),
                    prefetch=int(item.get("prefetch_count") or 0),
                    ack_required=bool(item.get("ack_required")),
                    unacked=unacked.get(details.get("name"), 0),
                    delivered=_count(counts, "deliver_get"),
                    acked=_count(counts, "ack"),
                )
            )
        return found

    def overview(self) -> dict[str, Any] | None:
        """``/api/overview`` (node, cluster_name, listeners, ...), or None if unreachable."""
        try:
            data = self._get("/api/overview")
        except (OSError, ValueError):  # URLError is an OSError
            return None
        return data if isinstance(data, dict) else None

    def check_same_broker(self, cluster_name: str | None) -> bool:
        """True when this API serves the cluster the AMQP connection announced; else ``refusal`` says why.

        The AMQP handshake names the cluster (``cluster_name`` in connection.start's
        server properties) but not the node, so the cluster names are compared.
        An API that does not answer is not refused (its figures are simply None);
        one that answers for another cluster, or a broker that names none, is.
        """
        if self.checked is not None and self.checked == cluster_name and self.refusal is None:
            return True
        where = self.describe()
        if cluster_name is None:
            self.refusal = f"ignoring the management API at {where}: the AMQP broker gave no cluster name to check."
            return False
        overview = self.overview()
        if overview is None:
            return True  # nothing to show from it anyway; checked again when it answers
        theirs = str(overview.get("cluster_name") or "")
        self.checked = cluster_name
        if theirs != cluster_name:
            node = str(overview.get("node") or "?")
            self.refusal = (
                f"ignoring the management API at {where}: it serves cluster {theirs!r} (node {node}), "
                f"and the AMQP connection reached cluster {cluster_name!r}; pass --management-url for that broker."
            )
            return False
        self.refusal = None
        return True

    def describe(self) -> str:
        """Where the API is, for the UI (no credentials)."""
        return mask_url(self.base)


def _count(stats: dict[str, Any], key: str) -> int | None:
    value = stats.get(key)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
