"""Provides the dashboard's command line: options, broker preflight, run, and cleanup on any exit."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from tui.engine.backend import Backend, LabConfig
from tui.engine.pool import WorkerPool
from tui.engine.replay import Replay
from tui.engine.session_log import SessionLog
from tui.engine.session_log import read as read_log
from tui.model.state import Model
from tui.text import printable
from workers.broker import BrokerError, ManagementApi, connect, declare_task_queue, server_version
from workers.local_node import BOOT_PHASES, LocalNode, LocalNodeError, port_open
from workers.settings import (
    AckMode,
    DispatchMode,
    SettingsError,
    add_connection_args,
    add_fail_arg,
    add_queue_args,
    check_ack_timeout,
    mask_url,
    parse_version,
    queue_spec_or_exit,
    transient_refused,
    url_is_default,
    url_or_exit,
    url_parts,
)
from workers.worker import ack_arg, positive_float, prefetch_arg

if TYPE_CHECKING:
    from textual.app import App

OTHER_COMMANDS = """\
other commands (each with --help for its options):
  dispatch-lab worker [options]          the tutorial's worker.py: one more worker, in any terminal
  dispatch-lab new-task [options] WORDS  the tutorial's new_task.py: publish a task
  dispatch-lab compare [options]         one scenario under each prefetch, side by side (no dashboard)
  dispatch-lab replay FILE               reopen a saved session (Ctrl+S) read-only
  dispatch-lab serve [--host H] [--port P] [--workers N]  the dashboard in browsers (watch-only tabs)
  dispatch-lab broker                    a private RabbitMQ node until Ctrl+C
  dispatch-lab bench [--quick]           the benchmarks (from a source checkout)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatch-lab",
        description="A live lab for RabbitMQ work queues: real workers, prefetch and ack modes side by side.",
        epilog=OTHER_COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection_args(parser)
    parser.add_argument("--workers", type=int, default=2, help="worker processes to start (default 2)")
    parser.add_argument("--prefetch", type=prefetch_arg, default=0, help="0 = round-robin (default), 1 = fair")
    parser.add_argument("--ack", type=ack_arg, default=AckMode.MANUAL, help="manual (default), auto, none")
    parser.add_argument("--seconds-per-dot", type=positive_float, default=1.0, metavar="F")
    add_queue_args(parser)
    add_fail_arg(parser)
    parser.add_argument(
        "--ack-timeout",
        type=_ack_timeout_arg,
        default=None,
        metavar="S",
        help="the broker's consumer_timeout in seconds: a private node is started with it (and a short channel "
        "tick); for another broker it tells the cards what it is (default: RabbitMQ's 30 min, shown as assumed)",
    )
    parser.add_argument("--no-persist", action="store_true", help="publish non-persistent messages")
    parser.add_argument("--heartbeat", type=int, default=None, metavar="S", help="workers' heartbeat")
    parser.add_argument(
        "--management-url",
        default=None,
        help="management API (default: a private node's own, else host:15672; used only if it is the same broker)",
    )
    add_runs_dir_arg(parser)
    parser.add_argument(
        "--report",
        action="store_true",
        help="the workers also report through the broker, so that other dashboards (serve's tabs) see them",
    )
    parser.add_argument(
        "--watch-only",
        action="store_true",
        help="no workers of its own and no keys that change anything: follow the workers reporting on this queue",
    )
    parser.add_argument(
        "--broker",
        choices=("auto", "private", "url"),
        default="auto",
        help="auto (default): the URL's broker, or a private node when nothing listens on localhost:5672; "
        "private: always a private node (F10 restarts it); url: only the URL's broker",
    )
    return parser


def _ack_timeout_arg(text: str) -> float:
    try:
        return check_ack_timeout(float(text))
    except ValueError as exc:
        message = str(exc) if isinstance(exc, SettingsError) else f"--ack-timeout takes seconds, not {text!r}"
        raise argparse.ArgumentTypeError(message) from None


PRIVATE_TIMEOUT = "set on the private node"
TOLD_TIMEOUT = "told by --ack-timeout"


def add_runs_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs-dir", type=Path, default=None, metavar="DIR", help="where Ctrl+S saves (default: runs/ here)"
    )


def parse_config(argv: list[str], console: Console) -> LabConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f"--workers must be 0 or more, not {args.workers}")
    workers = 0 if args.watch_only else args.workers
    if workers > WorkerPool.MAX_WORKERS:
        most = WorkerPool.MAX_WORKERS
        console.print(
            f"[yellow]--workers {workers} is more than this dashboard shows well; starting {most}.[/]", soft_wrap=True
        )
        workers = most
    if args.heartbeat is not None and not 0 <= args.heartbeat <= 3600:
        parser.error(f"--heartbeat must be between 0 and 3600 seconds, not {args.heartbeat}")
    spec = queue_spec_or_exit(parser, args)
    url = url_or_exit(args.url, parser.prog)
    private = args.broker == "private" or (
        args.broker == "auto" and url_is_default(args.url) and not port_open("127.0.0.1", 5672, 1.0)
    )
    told = args.ack_timeout is not None
    return LabConfig(
        url=url,
        queue=args.queue,
        workers=workers,
        mode=DispatchMode(args.prefetch, args.ack),
        seconds_per_dot=args.seconds_per_dot,
        spec=spec,
        persistent=not args.no_persist,
        heartbeat=args.heartbeat,
        management_url=args.management_url or default_management_url(url),
        private_broker=private,
        runs_dir=args.runs_dir,
        report=args.report,
        watch_only=args.watch_only,
        on_fail=args.on_fail,
        ack_timeout=args.ack_timeout,
        ack_timeout_source=(PRIVATE_TIMEOUT if private else TOLD_TIMEOUT) if told else "",
    )


def preflight(config: LabConfig, console: Console) -> ManagementApi | None:
    """Connect once and declare the queue, so a bad URL is one sentence before the screen opens."""
    return check_broker(config, console)[0]


def check_broker(config: LabConfig, console: Console) -> tuple[ManagementApi | None, str]:
    """``preflight``, and the broker's version as its server properties say it ("" when it says none)."""
    with console.status(f"Connecting to {mask_url(config.url)} …"):
        connection = connect(config.url, name="dispatch-lab preflight")
        try:
            version = server_version(connection) or ""
            if not config.durable and transient_refused(parse_version(version)):
                # Release notes, not tested here (the broker here is 3.10): 4.3 refuses them by default.
                raise BrokerError(
                    f"RabbitMQ {version} refuses non-durable shared queues by default: drop --transient "
                    "(--no-persist keeps the messages from surviving a restart), or allow them in the broker's "
                    "configuration (deprecated_features.permit.transient_nonexcl_queues = true)."
                )
            declare_task_queue(connection.channel(), config.queue, spec=config.spec)
        finally:
            if connection.is_open:
                connection.close()
        api = ManagementApi(config.url, base=config.management_url)
        # Answering is enough here: the queue monitor checks that it is this broker's API before using it.
        reachable = api.overview() is not None
    return (api if reachable else None), version


def default_management_url(url: str) -> str | None:
    """The management API of the broker ``url`` reaches, when we can tell; None means ``host:15672``.

    A private node (``dispatch-lab broker`` in another terminal) listens on loopback
    ports of its own, and ``host:15672`` is then some other broker's API: its
    config file, in the temp dir it was made in, names its management port.
    """
    parts = url_parts(url)
    if parts.host not in ("127.0.0.1", "localhost", "::1"):
        return None
    for config in Path(tempfile.gettempdir()).glob("dlab-node-*/rabbitmq.conf"):
        try:
            settings = dict(
                (key.strip(), value.strip())
                for key, sep, value in (line.partition("=") for line in config.read_text().splitlines())
                if sep
            )
        except OSError:
            continue
        listener = settings.get("listeners.tcp.1", "")
        port = settings.get("management.tcp.port", "")
        if listener.rpartition(":")[2] == str(parts.port) and port.isdecimal():
            return f"http://{settings.get('management.tcp.ip', '127.0.0.1')}:{port}"
    return None


class BootLine:
    """The spinner's line while a private node boots: its phase, and the seconds so far, counted at each redraw.

    The node reports a phase when one begins; the wait for the AMQP port alone can
    take 10 s on a busy machine, and a line that stood still at "(2s)" read as hung.
    Rich redraws a status about 12 times a second and asks this object each time.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.began = clock()
        self.phase = "starting"
        self.step = 0

    def update(self, phase: str) -> None:
        if phase != self.phase:
            self.step += 1
        self.phase = phase

    def __rich__(self) -> Text:
        elapsed = self.clock() - self.began
        step = f" (step {self.step} of {BOOT_STEPS})" if self.step else ""
        # One line at 80 columns, the longest phase too; "removed on exit" is said when it is ready, and in the
        # dashboard's header.
        return Text(f"Private RabbitMQ node{step}: {self.phase} … {elapsed:.0f}s")


BOOT_STEPS = len(BOOT_PHASES)


def start_private_node(config: LabConfig, console: Console) -> tuple[LabConfig, LocalNode]:
    """Boot a private RabbitMQ node with a spinner that counts the seconds; the config then points at it."""
    node = LocalNode(ack_timeout=config.ack_timeout)
    line = BootLine()
    with console.status(line):
        node.start(line.update)
    console.print(
        f"Private RabbitMQ node {node.node_name} ready in {line.clock() - line.began:.1f} s "
        "(removed when the dashboard exits)",
        highlight=False,
    )
    return replace(config, url=node.url, management_url=node.management_url), node


_STREAMS = (("standard input", 0), ("standard output", 1), ("standard error", 2))
DASHBOARD_ELSEWHERE = (
    "without one, run `dispatch-lab compare` (scenarios as a table or --json), "
    "`dispatch-lab worker` or `dispatch-lab new-task`."
)


def _is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:  # closed
        return False


def full_screen_refusal(prog: str, what: str, elsewhere: str) -> str | None:
    """One line saying why the full-screen UI cannot open here, or None when it can.

    Textual reads keys from standard input and draws on standard error, and with
    standard output redirected (``| cat``, ``> out.txt``) the screen came out garbled,
    or was written into the file for as long as the dashboard ran.
    """
    missing = [name for name, fd in _STREAMS if not _is_terminal(fd)]
    if not missing:
        return None
    if len(missing) == 1:
        which = f"{missing[0]} is not one"
    else:
        which = f"{', '.join(missing[:-1])} and {missing[-1]} are not terminals"
    return f"{prog}: {what} needs a terminal ({which}); {elsewhere}"


def main(argv: list[str]) -> int:
    console = Console(stderr=True)
    config = parse_config(argv, console)
    # The broker is checked before the terminal (a second, and a wrong URL needs fixing either way),
    # but no private node boots (about 10 s) for a screen that cannot open.
    refusal = None if served() else full_screen_refusal("dispatch-lab", "the dashboard", DASHBOARD_ELSEWHERE)
    if refusal is not None and config.private_broker:
        print(refusal, file=sys.stderr)
        return 2
    node: LocalNode | None = None
    try:
        if config.private_broker:
            config, node = start_private_node(config, console)
        management, version = check_broker(config, console)
        config = replace(config, broker_version=version)
    except (BrokerError, LocalNodeError) as exc:
        # soft_wrap: rich would otherwise break the sentence at 80 columns when stderr is not a terminal.
        console.print(f"dispatch-lab: {exc}", highlight=False, markup=False, soft_wrap=True)
        if node is not None:
            node.destroy()
        return 1
    except KeyboardInterrupt:
        if node is not None:
            node.destroy()
        return 130
    if refusal is not None:
        print(refusal, file=sys.stderr)
        if node is not None:
            node.destroy()
        return 2
    from tui.engine.pacing import tune_process
    from tui.view.app import DispatchLab

    tune_process()
    backend = Backend(config, management=management, node=node)
    model = Model(
        queue=config.queue, mode=config.mode, prefix=backend.prefix, spec=config.spec, on_fail=config.on_fail,
        broker_version=config.broker_version, ack_timeout=config.ack_timeout,
        ack_timeout_source=config.ack_timeout_source,
    )  # fmt: skip
    log = SessionLog(Path(tempfile.gettempdir()) / f"dispatch-lab-{os.getpid()}.jsonl")
    log.start()
    log.add([config.session_started(backend.prefix)])
    title = "dispatch-lab · watch-only" if config.watch_only else None
    app = DispatchLab(config, model, backend, log=log, title=title)
    atexit.register(backend.shutdown)

    finished = threading.Event()

    def clean_up(*, show_progress: bool) -> None:
        """Every way out runs this: workers, publisher and monitor, the temp log, the private node."""
        backend.shutdown()
        log.close()
        log.path.unlink(missing_ok=True)
        if node is not None:
            status = console.status("Stopping the private RabbitMQ node …")
            with status if show_progress else contextlib.nullcontext():
                node.destroy()

    def hard_exit(signum: int) -> None:
        clean_up(show_progress=False)  # the terminal may be gone: no spinner
        os._exit(128 + signum)

    def force_after(seconds: float, signum: int) -> None:
        if not finished.wait(seconds):
            hard_exit(signum)

    def leave(signum: int) -> None:
        # SIGHUP: the terminal is gone, and Textual's writer can hang on it, so stop the
        # workers and go at once. SIGTERM: ask the app to exit, and force it if it can't.
        if signum == signal.SIGTERM:
            threading.Thread(target=force_after, args=(5.0, signum), daemon=True).start()
            try:
                app.call_from_thread(app.exit)
                return
            except Exception:
                pass
        hard_exit(signum)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=leave, args=(signum,), daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    if served():
        keep_sigterm(app, on_signal)
        when_the_server_goes(lambda: leave(signal.SIGHUP))
    try:
        app.run()
    finally:
        finished.set()  # the app is out of its loop: no need to force anything
        clean_up(show_progress=True)
    return app.return_code or 0


def served() -> bool:
    """Run by textual-serve for a browser tab: its web driver speaks over pipes, not a terminal."""
    return "web_driver" in os.environ.get("TEXTUAL_DRIVER", "")


def keep_sigterm(app: App[int], on_signal: Callable[[int, FrameType | None], None]) -> None:
    """Under the web driver, SIGTERM is ours again once the driver took it.

    Textual's web driver sets its own SIGTERM handler on the event loop (post ExitApp),
    which replaces ours and never forces anything: a served dashboard busy in its loop
    ignored SIGTERM until killed. Once the driver has taken the signal, it is handed
    back (on the loop, where a loop's signal handlers are set) to the handler that exits
    and forces the exit after a few seconds.
    """

    def take_back() -> None:
        deadline = time.monotonic() + 60
        while signal.getsignal(signal.SIGTERM) is on_signal and time.monotonic() < deadline:
            time.sleep(0.05)

        def install() -> None:
            import asyncio

            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_signal, signal.SIGTERM, None)

        with contextlib.suppress(Exception):
            app.call_from_thread(install)

    threading.Thread(target=take_back, name="sigterm", daemon=True).start()


def when_the_server_goes(gone: Callable[[], None]) -> None:
    """Call ``gone`` once standard input hangs up: the serving process closed this tab's pipe, or died.

    The tab's dashboard must end with its connection; waiting for the web driver to
    notice left one running (at 94 % CPU) after its browser went away.
    """
    import select

    def watch() -> None:
        poller = select.poll()
        poller.register(sys.stdin.fileno(), 0)  # no events asked for: hang-ups and errors are always reported
        while True:
            for _fd, flags in poller.poll():
                if flags & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    gone()
                    return

    threading.Thread(target=watch, name="server-watch", daemon=True).start()


def replay_main(argv: list[str]) -> int:
    """Reopen a saved session (events.jsonl, or the folder holding it) read-only, without a broker."""
    parser = argparse.ArgumentParser(prog="dispatch-lab replay", description=replay_main.__doc__)
    parser.add_argument("file", type=Path, help="events.jsonl from Ctrl+S or compare --out, or its folder")
    add_runs_dir_arg(parser)
    args = parser.parse_args(argv)
    path: Path = args.file / "events.jsonl" if args.file.is_dir() else args.file
    if not path.is_file():
        print(f"dispatch-lab replay: no session log at {path}", file=sys.stderr)
        return 2
    model = Model()
    items = list(read_log(path))
    if not items:
        print(f"dispatch-lab replay: {path} holds no events", file=sys.stderr)
        return 2
    refusal = full_screen_refusal(
        "dispatch-lab replay",
        "a replay",
        "without one, read its events.jsonl (JSON lines), or the ledger.csv saved beside it.",
    )
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return 2
    replay = Replay(items, model)  # folds the log, keeping a checkpoint every so many events to step back to
    from tui.view.app import DispatchLab

    config = LabConfig(
        url=model.broker or "replay",
        queue=model.queue_name,
        spec=model.spec,
        mode=model.mode,
        runs_dir=args.runs_dir,
        on_fail=model.on_fail,
    )
    # The title also names the SVG screenshot and the terminal's window: a path's control characters escaped.
    DispatchLab(config, model, None, title=f"replay of {printable(str(path))}", replay=replay).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
