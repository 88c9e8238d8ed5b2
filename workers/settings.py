"""Provides broker URL resolution, password masking and the dispatch mode."""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote, urlsplit

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
DEFAULT_QUEUE = "task_queue"
URL_ENV = "AMQP_URL"

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
