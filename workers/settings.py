"""Provides broker URL resolution, password masking and the dispatch mode."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar
from urllib.parse import unquote, urlsplit

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
DEFAULT_QUEUE = "task_queue"
DEFAULT_TASK = "Hello World"
"""The tutorial's default task without its '!': a '!' makes a task fail here (issue 15's failing tasks)."""
URL_ENV = "AMQP_URL"
T = TypeVar("T")

MAX_PREFETCH = 65535
MAX_QUEUE_BYTES = 255
"""AMQP 0-9-1 sends a queue name as a short string: 255 bytes at most, in UTF-8."""
MAX_WORKERS = 64


class AckMode(str, Enum):
    """How a worker acknowledges its tasks, and everything that differs between the modes.

    A ``str`` enum: it equals, prints and encodes (JSON, argv) as its value, so the
    protocol and the command line keep their words. Adding a mode means adding it here,
    with its policy and its words; nothing else compares mode names.
    """

    MANUAL = "manual"
    AUTO = "auto"
    NONE = "none"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def broker_acks_on_delivery(self) -> bool:
        """The broker forgets the message once it is written to the consumer (``auto_ack``); prefetch limits nothing."""
        return self is AckMode.AUTO

    @property
    def worker_acks_after_work(self) -> bool:
        """The worker sends ``basic.ack`` when the task is done."""
        return self is AckMode.MANUAL

    @property
    def acked(self) -> bool:
        """Each task is acknowledged at some point (at delivery or after the work): a run of them can finish."""
        return self is not AckMode.NONE

    @property
    def unacked_while_held(self) -> bool:
        """The broker counts a delivery as unacked until the worker acks it or goes away."""
        return self is not AckMode.AUTO

    @property
    def lost_with_worker(self) -> bool:
        """A task the worker held is gone for good when the worker dies (the broker forgot it at delivery)."""
        return self is AckMode.AUTO

    @property
    def words(self) -> str:
        """The mode in the tutorial's words."""
        return _ACK_WORDS[self]

    @property
    def help(self) -> tuple[str, str]:
        """What the mode means, and what to watch for (the help screen's table)."""
        return _ACK_HELP[self]


ACK_MODES: tuple[AckMode, ...] = tuple(AckMode)
_ACK_WORDS = {AckMode.MANUAL: "manual ack", AckMode.AUTO: "auto ack", AckMode.NONE: "no ack (forgotten)"}
_ACK_HELP = {
    AckMode.MANUAL: (
        "ack after the work",
        "kill a worker: its tasks go back (ready rises) and arrive elsewhere *redelivered*",
    ),
    AckMode.AUTO: (
        "the broker forgets a message on delivery; prefetch limits nothing",
        "ready tasks are dealt round-robin over the workers present, each gets its whole share at once "
        "(a worker alone when a backlog arrives takes all of it); kill one and what it held is **lost**",
    ),
    AckMode.NONE: (
        "never acks (the tutorial's *forgotten ack*)",
        "unacked grows; when the worker goes, all of it comes back",
    ),
}


class FailMode(str, Enum):
    """What a worker does with a task that fails (its body holds ``!``), and what differs between the modes.

    A ``str`` enum like AckMode: its value is the word on the command line, in commands
    and in events. It matters only to a worker that acks after the work; an auto-acked
    task was forgotten at delivery, a never-acked one stays unacked, whatever the mode
    (``crash`` exits in every ack mode).
    """

    REQUEUE = "requeue"
    REJECT = "reject"
    CRASH = "crash"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def requeues(self) -> bool:
        """``basic.nack`` with requeue: the broker puts it back (at the head) and hands it out again at once."""
        return self is FailMode.REQUEUE

    @property
    def rejects(self) -> bool:
        """``basic.reject`` without requeue: dead-lettered when the queue names a target, else dropped."""
        return self is FailMode.REJECT

    @property
    def exits(self) -> bool:
        """The worker process exits mid-task, as an uncaught exception would: the broker requeues what it held."""
        return self is FailMode.CRASH

    @property
    def words(self) -> str:
        return _FAIL_WORDS[self]

    @property
    def help(self) -> tuple[str, str]:
        """What the mode does, and what to watch for (the help screen's table)."""
        return _FAIL_HELP[self]


FAIL_MODES: tuple[FailMode, ...] = tuple(FailMode)
_FAIL_WORDS = {FailMode.REQUEUE: "nack + requeue", FailMode.REJECT: "reject (no requeue)", FailMode.CRASH: "crash"}
_FAIL_HELP = {
    FailMode.REQUEUE: (
        "`basic_nack(requeue=True)`: back to the head of the queue",
        "a poison task loops: failed, requeued, failed … as fast as the workers go (the loop's rate is shown)",
    ),
    FailMode.REJECT: (
        "`basic_reject(requeue=False)`",
        "dead-lettered into `<queue>.dead` with --dead-letter, else **dropped** by the broker",
    ),
    FailMode.CRASH: (
        "the worker process exits mid-task (an uncaught exception)",
        "its tasks come back as after a kill; a quorum queue counts each return toward the delivery limit",
    ),
}


class QueueType(str, Enum):
    """The work queue's type (``x-queue-type``), and what differs for the lesson."""

    CLASSIC = "classic"
    QUORUM = "quorum"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def counts_deliveries(self) -> bool:
        """The broker counts each message's deliveries (``x-delivery-count``) and can enforce a delivery limit."""
        return self is QueueType.QUORUM

    @property
    def always_durable(self) -> bool:
        """The queue type exists only durable: a non-durable declaration is refused."""
        return self is QueueType.QUORUM

    @property
    def global_qos(self) -> bool:
        """``basic.qos`` with global=true is allowed. Measured on 3.10.8: a quorum queue's consumer on such a
        channel has its whole *connection* closed (540 NOT_IMPLEMENTED ... does not support global qos)."""
        return self is QueueType.CLASSIC

    @property
    def unlimited_prefetch(self) -> str:
        """What prefetch 0 (unlimited) means here, as measured on 3.10.8 with 3,000 ready messages."""
        if self is QueueType.QUORUM:
            return "at most 2000 in flight per consumer (the queue's own credit)"
        return "everything ready, at once"


QUEUE_TYPES: tuple[QueueType, ...] = tuple(QueueType)
DEAD_SUFFIX = ".dead"
MAX_DELIVERY_LIMIT = 1_000_000


@dataclass(frozen=True)
class QueueSpec:
    """How the work queue is declared: durable, its type, a delivery limit, a dead-letter queue.

    Every program that declares the queue (workers, publisher, dashboard) must ask
    for the same, or the broker refuses with 406 (broker.explain_channel_error says
    which argument differs).
    """

    durable: bool = True
    type: QueueType = QueueType.CLASSIC
    delivery_limit: int | None = None
    """``x-delivery-limit`` (quorum only): the broker dead-letters or drops a message returned more often."""
    dead_letter: bool = False
    """Declare ``<queue>.dead`` and point the work queue at it (default exchange, routing key ``<queue>.dead``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", QueueType(self.type))
        if self.type.always_durable and not self.durable:
            raise SettingsError(
                "A quorum queue is always durable: drop --transient (use --no-persist for messages "
                "that need not survive a restart)."
            )
        if self.delivery_limit is not None:
            if not self.type.counts_deliveries:
                raise SettingsError("--delivery-limit needs --queue-type quorum: a classic queue counts no deliveries.")
            if not 0 <= self.delivery_limit <= MAX_DELIVERY_LIMIT:
                raise SettingsError(
                    f"--delivery-limit must be between 0 and {MAX_DELIVERY_LIMIT}, not {self.delivery_limit}."
                )

    def dead_letter_queue(self, queue: str) -> str | None:
        """The dead-letter queue's name, or None without one."""
        return queue + DEAD_SUFFIX if self.dead_letter else None

    def arguments(self, queue: str) -> dict[str, object]:
        """The work queue's ``x-`` arguments (empty for the tutorial's plain durable queue)."""
        args: dict[str, object] = {}
        if self.type is not QueueType.CLASSIC:
            args["x-queue-type"] = self.type.value
        if self.delivery_limit is not None:
            args["x-delivery-limit"] = self.delivery_limit
        dead = self.dead_letter_queue(queue)
        if dead is not None:
            args["x-dead-letter-exchange"] = ""
            args["x-dead-letter-routing-key"] = dead
        return args

    def describe(self) -> str:
        """``quorum, durable, delivery limit 3, dead letters to <queue>.dead`` in short: for titles."""
        # A quorum queue is durable by nature: its type says it.
        parts = [self.type.value if self.type.always_durable else ("durable" if self.durable else "transient")]
        if self.delivery_limit is not None:
            parts.append(f"limit {self.delivery_limit}")
        if self.dead_letter:
            parts.append("DLX")
        return ", ".join(parts)

    def argv(self) -> list[str]:
        """The command-line flags that ask for this queue (for worker processes)."""
        out: list[str] = []
        if not self.durable:
            out.append("--transient")
        if self.type is not QueueType.CLASSIC:
            out += ["--queue-type", self.type.value]
        if self.delivery_limit is not None:
            out += ["--delivery-limit", str(self.delivery_limit)]
        if self.dead_letter:
            out.append("--dead-letter")
        return out


# What depends on the broker's version (its server properties say it; rabbitmq.com release notes).
# Tested here on 3.10.8 only: the 4.x branches are written from the release notes, not measured.
QUORUM_DEFAULT_LIMIT_SINCE = (4, 0)
QUORUM_DEFAULT_DELIVERY_LIMIT = 20
TRANSIENT_REFUSED_SINCE = (4, 3)
CLASSIC_TIMEOUT_DROPPED_SINCE = (4, 3)
DEFAULT_CONSUMER_TIMEOUT = 1800.0
"""RabbitMQ's ``consumer_timeout`` default (30 min) since 3.8.15."""


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """``3.10.8`` -> (3, 10, 8); None for anything that does not start with a number."""
    if not text:
        return None
    numbers = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if numbers is None:
        return None
    return tuple(int(part) for part in numbers.groups() if part is not None)


def effective_delivery_limit(spec: QueueSpec, version: tuple[int, ...] | None) -> tuple[int | None, str]:
    """The delivery limit the broker enforces on the queue, and where it comes from.

    Quorum queues have none by default before 4.0 and 20 from 4.0 on (a message returned
    a 21st time is dead-lettered, or dropped without a target). An unknown version is
    said as such, never guessed.
    """
    if not spec.type.counts_deliveries:
        return None, "classic queues count no deliveries"
    if spec.delivery_limit is not None:
        return spec.delivery_limit, "x-delivery-limit"
    if version is None:
        return None, "none asked; the broker's version is unknown (4.0+ applies 20)"
    if version >= QUORUM_DEFAULT_LIMIT_SINCE:
        return QUORUM_DEFAULT_DELIVERY_LIMIT, f"RabbitMQ {'.'.join(map(str, version))} default (4.0+)"
    return None, f"none (RabbitMQ {'.'.join(map(str, version))}: no default before 4.0)"


def transient_refused(version: tuple[int, ...] | None) -> bool:
    """RabbitMQ 4.3 refuses non-durable shared (non-exclusive) queues by default."""
    return version is not None and version >= TRANSIENT_REFUSED_SINCE


def consumer_timeout_applies(queue_type: QueueType, version: tuple[int, ...] | None) -> bool:
    """Whether the broker times out unacknowledged deliveries on this queue type (4.3: not on classic queues)."""
    return queue_type is QueueType.QUORUM or version is None or version < CLASSIC_TIMEOUT_DROPPED_SINCE


class SettingsError(ValueError):
    """A setting a user gave is out of range; the message is one sentence."""


def resolve_url(flag: str | None) -> str:
    """The broker URL: the --url flag, then AMQP_URL, then the tutorial's localhost.

    SettingsError when the chosen URL cannot be read (check_url).
    """
    if flag:
        return check_url(flag, "--url")
    chosen = os.environ.get(URL_ENV)
    return check_url(chosen, URL_ENV) if chosen else DEFAULT_URL


_ENCODE_HINT = (
    "its port must be a number, and special characters in its user name, password and virtual host "
    "must be percent-encoded (/ as %2F, ? as %3F, # as %23, @ as %40, : as %3A, % as %25)"
)


def check_url(url: str, source: str = "the broker URL") -> str:
    """The URL when pika reads it as its writer meant, else SettingsError; ``source`` names where it came from.

    The sentence never quotes the URL: a password holding ``/``, ``?`` or ``#`` ends
    the host part early, and every piece after that (the "port", the "path") is
    a piece of the password. pika's own error for ``amqp://u1:p@ss:w/rd%@host/``
    was "Port could not be cast to integer value as 'w'".
    """
    if any(ord(char) < 32 or char == "\x7f" for char in url.strip()):
        # urllib drops tabs and line breaks inside a URL: a password "p<tab>w" would log in as "pw".
        raise SettingsError(
            f"The broker URL in {source} holds a control character (a tab or a line break): "
            "remove it, or percent-encode it (a tab as %09)."
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when the "port" is no number (or out of range)
    except ValueError:
        raise SettingsError(f"The broker URL in {source} cannot be read: {_ENCODE_HINT}.") from None
    if parts.scheme not in ("amqp", "amqps"):
        raise SettingsError(f"The broker URL in {source} must begin with amqp:// or amqps://.")
    if "@" in parts.path or "@" in parts.query or "@" in parts.fragment:
        # An "@" after the host: the user name or password held "/", "?" or "#", which ended the host early.
        raise SettingsError(f"The broker URL in {source} cannot be read: {_ENCODE_HINT}.")
    import pika  # here, not at the top: the model (tui/state) imports this module and stays stdlib-only

    try:
        pika.URLParameters(url)  # its query options (heartbeat=…, ssl_options=…)
    except (ValueError, TypeError, SyntaxError, OSError) as exc:
        reason = scrub(" ".join(str(exc).split()), url)
        raise SettingsError(f"The broker URL in {source} has an option pika cannot use: {reason}.") from None
    return url


def url_is_default(flag: str | None) -> bool:
    """True when neither --url nor AMQP_URL chose the broker."""
    return not flag and not os.environ.get(URL_ENV)


# The password runs to the last "@" before the path, as urlsplit (and so pika) reads it:
# "amqp://u:p@ss@h/" logs in with "p@ss", so stopping at the first "@" would show "ss".
_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^/?#\s]*)(?P<at>@)", re.I)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, safe for the UI and logs."""
    return _PASSWORD_IN_URL.sub(lambda m: f"{m['head']}***{m['at']}", url)


def scrub(text: str, url: str | None = None) -> str:
    """Text with any URL password, and the given URL's password anywhere, masked."""
    text = _PASSWORD_IN_URL.sub(lambda m: f"{m['head']}***{m['at']}", text)
    if url:
        password = url_parts(url).password
        if password and len(password) >= 3:
            text = text.replace(password, "***")
    return text


@dataclass(frozen=True)
class UrlParts:
    """The pieces of an AMQP URL that error messages and the management API need."""

    host: str
    port: int
    user: str
    password: str
    vhost: str


def url_parts(url: str) -> UrlParts:
    """Split an AMQP URL the way pika reads it (an empty path means vhost '/')."""
    parts = urlsplit(url)
    tls = parts.scheme == "amqps"
    try:
        port = parts.port or (5671 if tls else 5672)
    except ValueError:
        port = 5671 if tls else 5672
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    vhost = unquote(path) if path else "/"
    return UrlParts(
        host=parts.hostname or "localhost",
        port=port,
        user=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        vhost=vhost,
    )


@dataclass(frozen=True)
class DispatchMode:
    """How the broker hands tasks to a worker: prefetch window and ack mode."""

    prefetch: int = 1
    ack: AckMode = AckMode.MANUAL

    def __post_init__(self) -> None:
        # "manual" as read from a command, a log or a test is AckMode.MANUAL; anything else is a ValueError.
        object.__setattr__(self, "ack", AckMode(self.ack))

    def describe(self) -> str:
        """The mode in the tutorial's words, for headers and tables."""
        ack = self.ack.words
        if self.ack.broker_acks_on_delivery:
            return f"auto ack: prefetch ignored ({self.prefetch}), broker forgets on delivery"
        if self.prefetch == 0:
            return f"round-robin: prefetch 0 (unlimited), {ack}"
        if self.prefetch == 1:
            return f"fair dispatch: prefetch 1, {ack}"
        return f"prefetch {self.prefetch}, {ack}"


def check_prefetch(value: int) -> int:
    """A prefetch count the broker accepts (0 = unlimited), or SettingsError."""
    if not 0 <= value <= MAX_PREFETCH:
        raise SettingsError(f"--prefetch must be between 0 (unlimited) and {MAX_PREFETCH}, not {value}.")
    return value


def check_ack(value: str) -> AckMode:
    """One of the ack modes by its name, or SettingsError."""
    try:
        return AckMode(value)
    except ValueError:
        names = ", ".join(mode.value for mode in AckMode)
        raise SettingsError(f"--ack must be one of {names}, not {value!r}.") from None


def check_fail(value: str) -> FailMode:
    """One of the failure modes by its name, or SettingsError."""
    try:
        return FailMode(value)
    except ValueError:
        names = ", ".join(mode.value for mode in FailMode)
        raise SettingsError(f"--on-fail must be one of {names}, not {value!r}.") from None


def check_queue_type(value: str) -> QueueType:
    """One of the queue types by its name, or SettingsError."""
    try:
        return QueueType(value)
    except ValueError:
        names = ", ".join(kind.value for kind in QueueType)
        raise SettingsError(f"--queue-type must be one of {names}, not {value!r}.") from None


def check_ack_timeout(value: float) -> float:
    """Seconds of a broker's consumer_timeout: 1 s to a day, or SettingsError."""
    if not 1 <= value <= 86400 or value != value:
        raise SettingsError(f"--ack-timeout must be between 1 and 86400 seconds, not {value}.")
    return value


def _argparse_type(check: Callable[[str], T]) -> Callable[[str], T]:
    def parse(text: str) -> T:
        try:
            return check(text)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SettingsError(f"not a whole number: {text!r}") from None


def add_queue_args(parser: argparse.ArgumentParser, *, transient: bool = True) -> None:
    """--queue-type, --delivery-limit and --dead-letter (and --transient): how the work queue is declared.

    Every program that declares the queue takes them, since all must ask for the same.
    """
    if transient:
        parser.add_argument("--transient", action="store_true", help="declare the queue non-durable (default: durable)")
    parser.add_argument(
        "--queue-type",
        type=_argparse_type(check_queue_type),
        default=QueueType.CLASSIC,
        help="classic (default, the tutorial's) or quorum",
    )
    parser.add_argument(
        "--delivery-limit",
        type=_argparse_type(_whole_number),
        default=None,
        metavar="N",
        help="quorum: dead-letter (or drop) a message returned more than N times (x-delivery-limit)",
    )
    parser.add_argument(
        "--dead-letter",
        action="store_true",
        help="declare <queue>.dead and dead-letter rejected and over-limit messages into it",
    )


def add_fail_arg(parser: argparse.ArgumentParser) -> None:
    """--on-fail: what a worker does with a task whose body holds '!'."""
    parser.add_argument(
        "--on-fail",
        type=_argparse_type(check_fail),
        default=FailMode.REQUEUE,
        help="what a worker does with a failing task (a body with '!'): requeue (default: nack + requeue), "
        "reject (dead-letter or drop), crash (the process exits)",
    )


def queue_spec_or_exit(parser: argparse.ArgumentParser, args: argparse.Namespace) -> QueueSpec:
    """The QueueSpec the flags ask for; a combination the broker would refuse is parser.error (exit 2)."""
    try:
        return QueueSpec(
            durable=not getattr(args, "transient", False),
            type=args.queue_type,
            delivery_limit=args.delivery_limit,
            dead_letter=args.dead_letter,
        )
    except SettingsError as exc:
        parser.error(str(exc))


def check_seconds_per_dot(value: float) -> float:
    """A non-negative, finite number of seconds per dot, or SettingsError."""
    if not 0 <= value < 3600 or value != value:
        raise SettingsError(f"--seconds-per-dot must be 0 or more (and under an hour), not {value}.")
    return value


def check_queue(name: str) -> str:
    """A name for the work queue: not empty, at most MAX_QUEUE_BYTES in UTF-8; else SettingsError.

    Empty is refused too: the broker would make up a new name for each program
    that declares it, so no two would meet on one queue.
    """
    if not name:
        raise SettingsError(
            "--queue must not be empty: the broker would make up a different name for each program that declares it."
        )
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # bytes that were not UTF-8 in argv
        raise SettingsError("--queue must be text in UTF-8.") from None
    if size > MAX_QUEUE_BYTES:
        limit = MAX_QUEUE_BYTES
        raise SettingsError(f"--queue must be at most {limit} bytes in UTF-8 (the broker's limit), not {size}.")
    return name


def _queue_arg(text: str) -> str:
    try:
        return check_queue(text)
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """--url and --queue, shared by every program that talks to the broker; --queue is checked as it is read."""
    parser.add_argument("--url", help="broker URL (default: $AMQP_URL, else guest@localhost:5672)")
    parser.add_argument("--queue", type=_queue_arg, default=DEFAULT_QUEUE, help="work queue (default: %(default)s)")


def url_or_exit(flag: str | None, prog: str) -> str:
    """resolve_url for a program's main: a URL that cannot be read is one line on stderr and exit 2, as argparse does.

    A password given in --url earns a note (warn_password_in_argv).
    """
    try:
        url = resolve_url(flag)
    except SettingsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    warn_password_in_argv(flag)
    return url


def warn_password_in_argv(flag: str | None) -> None:
    """A URL password on the command line is visible to every user in ps."""
    if flag and url_parts(flag).password and "@" in flag and mask_url(flag) != flag:
        print("note: a password in --url is visible in the process list; prefer AMQP_URL", file=sys.stderr)
