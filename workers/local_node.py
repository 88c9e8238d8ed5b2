"""Provides a throwaway private RabbitMQ node: own temp dir, free ports, stopped on exit.

The dashboard falls back to one when the default broker is unreachable, the
tests use one when no broker runs, and ``dispatch-lab broker`` runs one in the
foreground. Nothing here touches a system broker: the node has its own data
and log directories, config files, Erlang cookie (a private HOME), node name
and ports, all on 127.0.0.1.

Measured on 2 cores with RabbitMQ 3.10.8 / OTP 25: the VM answers
``rabbitmq-diagnostics ping`` after about 1 s, but the AMQP listener, started
last, opens only after 4-8 s (longer under load), so readiness here means "an
AMQP connection succeeded" (and, with management on, "/api/overview answered").
A graceful stop takes about 6 s with the management plugin (5 s of it a fixed
wait after "Management plugin: to stop collect_statistics"), so a restart
takes 10-12 s.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from workers.broker import connection_parameters

Progress = Callable[[str], None]
BOOT_PHASES = (
    "booting Erlang VM",
    "waiting for AMQP port",
    "opening an AMQP connection",
    "waiting for the management API",
)
"""What ``LocalNode.start`` reports, in order, as each phase begins (the last only with the management plugin)."""

DEBIAN_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
HOST = "127.0.0.1"
NOT_INSTALLED = (
    "No RabbitMQ broker is reachable and rabbitmq-server is not installed: "
    "install it (apt-get install rabbitmq-server) or run `docker compose up -d`."
)
# Variables a caller's environment (or /etc/rabbitmq/rabbitmq-env.conf, which
# the scripts source unless told otherwise) could use to point our node at the
# system broker's name, ports or files.
_INHERITED_PREFIXES = ("RABBITMQ_",)
_INHERITED_NAMES = ("ERL_FLAGS", "ERL_AFLAGS", "ERL_ZFLAGS", "ERL_LIBS", "NODENAME", "CONF_ENV_FILE")
_POLL = 0.1
_CTL_TIMEOUT = 30.0
_EXIT_TIMEOUT = 30.0
_KILL_TIMEOUT = 10.0


class LocalNodeError(Exception):
    """A private node could not be started; ``str()`` is one sentence naming the fix."""


def rabbitmq_server_path() -> str | None:
    """The rabbitmq-server script to run, or None when RabbitMQ is not installed.

    Debian's /usr/sbin/rabbitmq-server is a wrapper that switches to the
    rabbitmq user and logs to system paths, so the real script under
    /usr/lib/rabbitmq/bin is preferred.
    """
    if os.access(DEBIAN_SERVER, os.X_OK):
        return str(DEBIAN_SERVER)
    return shutil.which("rabbitmq-server")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


LOWEST_PORT = 20000
"""Where free ports are looked for: above the usual services' ports, below the kernel's ephemeral range."""


def ephemeral_ports() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (Linux's ip_local_port_range, else its default)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free on 127.0.0.1 a moment ago, outside the ephemeral range.

    A port the kernel handed out (``bind(0)``) is in the ephemeral range, which every outgoing
    connection draws from too: with two test processes opening connections, a private node's
    AMQP port was taken between the pick and the node's listen (``could_not_start_listener``).
    """
    low, _high = ephemeral_ports()
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                # Below the ephemeral range when there is room (there is by default), else any port.
                sock.bind((HOST, LOWEST_PORT + secrets.randbelow(low - LOWEST_PORT) if low > LOWEST_PORT + 1000 else 0))
            except OSError:
                sock.close()  # taken: try another
                continue
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def node_pids(node_name: str) -> list[int]:
    """PIDs of Erlang VMs whose command line names ``node_name`` (like ``pgrep -f``)."""
    pids: list[int] = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"beam.smp") and node_name.encode() in argv:
            pids.append(int(entry.name))
    return pids


class LocalNode:
    """A private RabbitMQ node in its own temp dir, started as our child process.

    ``stop()`` keeps the data so ``restart()`` shows what survives a broker
    restart; ``destroy()`` (also run at exit) stops it and removes every file.
    ``base_dir`` is the directory the node's temp dir is made in (default: the
    system temp dir).
    ``max_message_size`` (bytes) makes the broker refuse bigger messages, as a
    production broker may (RabbitMQ's default is 128 MiB).

    ``ack_timeout`` is RabbitMQ's ``consumer_timeout`` in seconds (the broker's
    default is 30 minutes): a channel whose oldest delivery stays unacked longer is
    closed, and its deliveries requeued. RabbitMQ 3.x checks it on each channel
    tick (``channel_tick_interval``, 60 s by default), so ``channel_tick`` (seconds)
    defaults to a quarter of the timeout, at most 60 s: a short timeout then acts
    within about 1.25 times its value, not up to a minute late.
    """

    def __init__(
        self,
        *,
        base_dir: Path | None = None,
        management: bool = True,
        max_message_size: int | None = None,
        ack_timeout: float | None = None,
        channel_tick: float | None = None,
    ) -> None:
        self.management = management
        self.max_message_size = max_message_size
        self.ack_timeout_ms = _milliseconds(ack_timeout, "ack_timeout")
        tick_ms = _milliseconds(channel_tick, "channel_tick")
        if tick_ms is None and self.ack_timeout_ms is not None:
            tick_ms = min(60_000, max(100, self.ack_timeout_ms // 4))
        self.channel_tick_ms = tick_ms
        self.node_name = f"dlab-{secrets.token_hex(4)}@localhost"
        self.amqp_port, self.management_port, self.dist_port = free_ports(3)
        self.dir = Path(tempfile.mkdtemp(prefix="dlab-node-", dir=base_dir))
        self.log_path = self.dir / "log" / "rabbit.log"
        self.console_path = self.dir / "console.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._destroyed = False
        self._write_files()
        atexit.register(self.destroy)

    @property
    def url(self) -> str:
        """The AMQP URL; guest/guest is accepted because the node listens on loopback only."""
        return f"amqp://guest:guest@{HOST}:{self.amqp_port}/%2F"

    @property
    def management_url(self) -> str:
        """The management UI and HTTP API base URL."""
        return f"http://{HOST}:{self.management_port}"

    @property
    def running(self) -> bool:
        """True while the node's process is alive."""
        process = self._process
        return process is not None and process.poll() is None

    def __repr__(self) -> str:
        return f"LocalNode({self.node_name}, amqp={self.amqp_port}, dir={self.dir})"

    def _write_files(self) -> None:
        (self.dir / "home").mkdir(mode=0o700)
        (self.dir / "mnesia").mkdir()
        (self.dir / "log").mkdir()
        # Our own (empty) env file, or the scripts source /etc/rabbitmq/rabbitmq-env.conf,
        # which may name the system node (NODENAME=rabbit@localhost).
        (self.dir / "rabbitmq-env.conf").write_text("")
        lines = [
            f"listeners.tcp.1 = {HOST}:{self.amqp_port}",
            "loopback_users.guest = true",
        ]
        plugins = "[rabbitmq_management]." if self.management else "[]."
        if self.management:
            lines += [f"management.tcp.ip = {HOST}", f"management.tcp.port = {self.management_port}"]
        if self.max_message_size is not None:
            lines.append(f"max_message_size = {self.max_message_size}")
        if self.ack_timeout_ms is not None:
            lines.append(f"consumer_timeout = {self.ack_timeout_ms}")
        (self.dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.dir / "enabled_plugins").write_text(plugins + "\n")
        if self.channel_tick_ms is not None:
            # Not in rabbitmq.conf's schema: an application setting, so advanced.config.
            (self.dir / "advanced.config").write_text(
                f"[{{rabbit, [{{channel_tick_interval, {self.channel_tick_ms}}}]}}].\n"
            )

    def environment(self) -> dict[str, str]:
        """The environment for rabbitmq-server and rabbitmqctl aimed at this node."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(_INHERITED_PREFIXES) and key not in _INHERITED_NAMES
        }
        d = self.dir
        env.update(
            HOME=str(d / "home"),  # the Erlang cookie lives in $HOME: a private one
            RABBITMQ_NODENAME=self.node_name,
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_LOGS=str(self.log_path),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            # Distribution on loopback only; the node name in argv lets `pgrep -f` find the VM
            # (RabbitMQ 3.10 passes the name through the environment, not argv).
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                f"-kernel inet_dist_use_interface {{127,0,0,1}} -dispatch_lab_node {self.node_name}"
            ),
            # Run the VM in place of the script (our child's PID is beam.smp) with an Erlang
            # shell on stdin: when we die, however we die, the pipe's EOF halts the node.
            RABBITMQ_ALLOW_INPUT="true",
        )
        return env

    def start(self, progress: Progress | None = None, timeout: float = 90.0) -> str:
        """Boot the node and wait until it accepts AMQP connections; returns its URL.

        ``progress`` is called with a short phase text ("booting Erlang VM",
        "waiting for AMQP port", ...) for a spinner. Raises LocalNodeError when
        RabbitMQ is not installed or the node does not come up within ``timeout``.
        """
        report = progress or (lambda _phase: None)
        server = rabbitmq_server_path()
        if server is None:
            raise LocalNodeError(NOT_INSTALLED)
        with self._lock:
            if self._destroyed:
                raise LocalNodeError(f"The private node {self.node_name} was destroyed: create a new one.")
            if self.running:
                return self.url
            with self.console_path.open("ab") as console:
                self._process = subprocess.Popen(
                    [server],
                    env=self.environment(),
                    cwd=self.dir,
                    stdin=subprocess.PIPE,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: Ctrl+C in the terminal is ours to handle
                )
        try:
            self._wait_ready(report, time.monotonic() + timeout, timeout)
        except BaseException:
            self._shutdown(graceful=False)
            raise
        return self.url

    def _wait_ready(self, report: Progress, deadline: float, timeout: float) -> None:
        # Each phase is reported, then waited for. The VM's distribution port opens
        # (and `rabbitmq-diagnostics ping` answers) seconds before the AMQP listener,
        # which RabbitMQ starts last.
        boot, amqp, connect, management = BOOT_PHASES
        steps: list[tuple[str, Callable[[], bool]]] = [
            (boot, lambda: port_open(HOST, self.dist_port, 0.2)),
            (amqp, lambda: port_open(HOST, self.amqp_port, 0.2)),
            (connect, self._amqp_works),
        ]
        if self.management:
            steps.append((management, self._management_works))
        for phase, ready in steps:
            report(phase)
            while not ready():
                process = self._process
                if self._destroyed or process is None:
                    raise LocalNodeError(f"The private node {self.node_name} was stopped while it booted.")
                code = process.poll()
                if code is not None:
                    raise LocalNodeError(self.explain_failure(f"exited during boot (exit code {code})"))
                if time.monotonic() > deadline:
                    raise LocalNodeError(self.explain_failure(f"did not finish booting within {timeout:g} s"))
                time.sleep(_POLL)

    def _amqp_works(self) -> bool:
        params = connection_parameters(self.url, name="dispatch-lab local node probe")
        params.socket_timeout = 2
        params.stack_timeout = 3
        try:
            connection = pika.BlockingConnection(params)
        # A port that accepts but never speaks AMQP ends in AMQPConnectorStackTimeout,
        # which is not an AMQPError.
        except (pika.exceptions.AMQPError, AMQPConnectorException, OSError):
            return False
        connection.close()
        return True

    def _management_works(self) -> bool:
        token = base64.b64encode(b"guest:guest").decode()
        request = urllib.request.Request(
            self.management_url + "/api/overview", headers={"Authorization": f"Basic {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def explain_failure(self, what: str) -> str:
        """One sentence: the node ``what``, the reason, and a copy of its logs that outlives destroy()."""
        saved = Path(tempfile.gettempdir()) / f"{self.node_name.split('@')[0]}-boot.log"
        console = self.console_path.read_bytes() if self.console_path.exists() else b""
        log = self.log_path.read_bytes() if self.log_path.exists() else b""
        saved.write_bytes(log + b"\n" + console)  # console last: its tail holds the boot error
        clue = _boot_error(console.decode(errors="replace"))
        hint = f": {clue};" if clue else ":"
        return f"The private RabbitMQ node {what}{hint} see `tail -n 40 {saved}`."

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the node's process exits (its exit code), or None after ``timeout``.

        Polls rather than calling ``Popen.wait()``: a signal handler that destroys
        the node while the main thread sits in ``Popen.wait()`` finds the wait lock
        held and cannot reap the process.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            process = self._process
            if process is None:
                return None
            code = process.poll()
            if code is not None:
                return code
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the node gracefully (``rabbitmqctl stop``) and keep its data for a restart."""
        self._shutdown(graceful=True)

    def restart(self, progress: Progress | None = None) -> None:
        """Stop and start again on the same data and ports: durable queues and persistent messages stay."""
        self.stop()
        self.start(progress)

    def destroy(self) -> None:
        """Stop the node and remove all its files; safe to call twice (it also runs at exit)."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
        # A graceful stop would spend about 6 s (5 of them waiting on the management
        # plugin) flushing data that is deleted next, so the VM is simply killed.
        self._shutdown(graceful=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        atexit.unregister(self.destroy)

    def _shutdown(self, *, graceful: bool) -> None:
        with self._lock:
            process, self._process = self._process, None
            if process is None:
                return
            if graceful and process.poll() is None:
                if self._rabbitmqctl_stop():
                    _wait_quietly(process, _EXIT_TIMEOUT)
                if process.poll() is None:
                    _kill_group(process.pid, signal.SIGTERM)  # a graceful stop as well
                    _wait_quietly(process, _EXIT_TIMEOUT)
            if process.poll() is None:
                _kill_group(process.pid, signal.SIGKILL)
                _wait_quietly(process, _KILL_TIMEOUT)
            # The VM's helpers (erl_child_setup, inet_gethost) share its process group.
            _kill_group(process.pid, signal.SIGKILL)
            if process.stdin is not None:
                process.stdin.close()
            for pid in node_pids(self.node_name):
                _kill(pid, signal.SIGKILL)

    def rabbitmqctl(self, *args: str, timeout: float = _CTL_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n <this node> args`` with the node's environment (its cookie); output as text.

        For what an operator does to a broker: ``close_connection <pid> "reason"``,
        ``list_queues name messages_unacknowledged`` (the queue's own figures, not
        the management API's, which trail by seconds).
        """
        server = rabbitmq_server_path()
        if server is None:
            raise LocalNodeError(NOT_INSTALLED)
        return subprocess.run(
            [str(Path(server).with_name("rabbitmqctl")), "-n", self.node_name, *args],
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _rabbitmqctl_stop(self) -> bool:
        """Ask the node to stop; True when rabbitmqctl says it is stopping."""
        server = rabbitmq_server_path()
        ctl = Path(server).with_name("rabbitmqctl") if server else None
        if ctl is None or not ctl.exists():
            return False
        try:
            done = subprocess.run(
                [str(ctl), "-n", self.node_name, "stop"],
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=_CTL_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False  # the signals that follow stop it
        return done.returncode == 0

    def __enter__(self) -> LocalNode:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()


def _milliseconds(seconds: float | None, what: str) -> int | None:
    """Seconds as the whole milliseconds RabbitMQ's settings take; None stays None."""
    if seconds is None:
        return None
    if not math.isfinite(seconds) or seconds < 0.001:
        raise ValueError(f"{what} must be at least 0.001 seconds, not {seconds!r}")
    return round(seconds * 1000)


def _wait_quietly(process: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _boot_error(console: str) -> str:
    """The one-line reason a boot failed, from the node's console output, shortened; or ''."""
    lines = [line.strip() for line in console.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("init terminating in do_boot"):
            return line[:200]
    for line in reversed(lines):
        if "error" in line.lower():
            return line[:200]
    return ""


def install_signal_cleanup(
    node: LocalNode, signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGHUP)
) -> None:
    """Destroy ``node`` on SIGTERM/SIGHUP, then exit (or run the handler that was there).

    For the application to call from the main thread: a library must not take
    over signal handling behind its caller's back. atexit alone is not enough,
    since a default SIGTERM ends Python without running it.
    """
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum: int, frame: FrameType | None) -> None:
        node.destroy()
        before = previous.get(signal.Signals(signum))
        if callable(before):
            before(signum, frame)
            return
        raise SystemExit(128 + signum)

    for sig in signals:
        signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None, *, prog: str = "dispatch-lab broker") -> int:
    """``dispatch-lab broker``: run a private node in the foreground until Ctrl+C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Run a private, throwaway RabbitMQ node until Ctrl+C (its data goes with it)."
    )
    parser.add_argument("--no-management", action="store_true", help="do not enable the management plugin")
    args = parser.parse_args(argv)
    try:
        node = LocalNode(management=not args.no_management)
    except OSError as exc:
        print(f"{prog}: cannot create the node's temp dir: {exc}", file=sys.stderr)
        return 1
    install_signal_cleanup(node)
    began = time.monotonic()

    def progress(phase: str) -> None:
        print(f"[{time.monotonic() - began:5.1f}s] {phase} ...", file=sys.stderr, flush=True)

    try:
        url = node.start(progress)
        # Printed in full on purpose: guest/guest is RabbitMQ's well-known default and the
        # node accepts it on loopback only, and users need the exact URL for AMQP_URL.
        print(f"RabbitMQ node {node.node_name} ready in {time.monotonic() - began:.1f} s")
        print(f"  AMQP:       {url}")
        if node.management:
            print(f"  management: {node.management_url}  (guest / guest)")
        print(f"  use it:     export AMQP_URL='{url}'")
        print(f"  data:       {node.dir}")
        print("Ctrl+C stops the node and deletes its data.", flush=True)
        code = node.wait()
        print(f"{prog}: {node.explain_failure(f'exited unexpectedly (exit code {code})')}", file=sys.stderr)
        return 1
    except LocalNodeError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping the node ...", file=sys.stderr)
        return 0
    finally:
        node.destroy()
