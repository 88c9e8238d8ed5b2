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
from dataclasses import replace
from pathlib import Path
from types import FrameType

from rich.console import Console

from tui.backend import Backend, LabConfig
from tui.observations import SessionStarted
from tui.pool import WorkerPool
from tui.session_log import SessionLog
from tui.session_log import read as read_log
from tui.state import Model
from workers.broker import BrokerError, ManagementApi, connect, declare_task_queue
from workers.local_node import LocalNode, LocalNodeError, port_open
from workers.settings import (
    DispatchMode,
    add_connection_args,
    mask_url,
    resolve_url,
    url_is_default,
    warn_password_in_argv,
)
from workers.worker import ack_arg, positive_float, prefetch_arg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatch-lab",
        description="A live lab for RabbitMQ work queues: real workers, prefetch and ack modes side by side.",
        epilog="Also: dispatch-lab worker …, dispatch-lab new-task … (the tutorial's two programs).",
    )
    add_connection_args(parser)
    parser.add_argument("--workers", type=int, default=2, help="worker processes to start (default 2)")
    parser.add_argument("--prefetch", type=prefetch_arg, default=0, help="0 = round-robin (default), 1 = fair")
    parser.add_argument("--ack", type=ack_arg, default="manual", help="manual (default), auto, none")
    parser.add_argument("--seconds-per-dot", type=positive_float, default=1.0, metavar="F")
    parser.add_argument("--transient", action="store_true", help="a non-durable queue (lost on restart)")
    parser.add_argument("--no-persist", action="store_true", help="publish non-persistent messages")
    parser.add_argument("--heartbeat", type=int, default=None, metavar="S", help="workers' heartbeat")
    parser.add_argument("--management-url", default=None, help="management API (default: host:15672)")
    parser.add_argument(
        "--broker",
        choices=("auto", "private", "url"),
        default="auto",
        help="auto (default): the URL's broker, or a private node when nothing listens on localhost:5672; "
        "private: always a private node (F10 restarts it); url: only the URL's broker",
    )
    return parser


def parse_config(argv: list[str], console: Console) -> LabConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f"--workers must be 0 or more, not {args.workers}")
    workers = args.workers
    if workers > WorkerPool.MAX_WORKERS:
        most = WorkerPool.MAX_WORKERS
        console.print(
            f"[yellow]--workers {workers} is more than this dashboard shows well; starting {most}.[/]", soft_wrap=True
        )
        workers = most
    if args.heartbeat is not None and not 0 <= args.heartbeat <= 3600:
        parser.error(f"--heartbeat must be between 0 and 3600 seconds, not {args.heartbeat}")
    warn_password_in_argv(args.url)
    private = args.broker == "private" or (
        args.broker == "auto" and url_is_default(args.url) and not port_open("127.0.0.1", 5672, 1.0)
    )
    return LabConfig(
        url=resolve_url(args.url),
        queue=args.queue,
        workers=workers,
        mode=DispatchMode(args.prefetch, args.ack),
        seconds_per_dot=args.seconds_per_dot,
        durable=not args.transient,
        persistent=not args.no_persist,
        heartbeat=args.heartbeat,
        management_url=args.management_url,
        private_broker=private,
    )


def preflight(config: LabConfig, console: Console) -> ManagementApi | None:
    """Connect once and declare the queue, so a bad URL is one sentence before the screen opens."""
    with console.status(f"Connecting to {mask_url(config.url)} …"):
        connection = connect(config.url, name="dispatch-lab preflight")
        try:
            declare_task_queue(connection.channel(), config.queue, durable=config.durable)
        finally:
            if connection.is_open:
                connection.close()
        api = ManagementApi(config.url, base=config.management_url)
        reachable = api.queue(config.queue) is not None
    return api if reachable else None


def start_private_node(config: LabConfig, console: Console) -> tuple[LabConfig, LocalNode]:
    """Boot a private RabbitMQ node with a spinner; the config then points at it."""
    node = LocalNode()
    began = time.monotonic()
    with console.status("Starting a private RabbitMQ node (about 10 s) …") as status:
        node.start(lambda phase: status.update(f"Private RabbitMQ node: {phase} ({time.monotonic() - began:.0f}s) …"))
    console.print(f"Private RabbitMQ node {node.node_name} ready in {time.monotonic() - began:.1f} s", highlight=False)
    return replace(config, url=node.url, management_url=node.management_url), node


def main(argv: list[str]) -> int:
    console = Console(stderr=True)
    config = parse_config(argv, console)
    node: LocalNode | None = None
    try:
        if config.private_broker:
            config, node = start_private_node(config, console)
        management = preflight(config, console)
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
    from tui.app import DispatchLab
    from tui.pacing import tune_process

    tune_process()
    backend = Backend(config, management=management, node=node)
    model = Model(queue=config.queue, mode=config.mode, prefix=backend.prefix)
    log = SessionLog(Path(tempfile.gettempdir()) / f"dispatch-lab-{os.getpid()}.jsonl")
    log.start()
    log.add([session_started(config, backend.prefix)])
    app = DispatchLab(config, model, backend, log=log)
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
    try:
        app.run()
    finally:
        finished.set()  # the app is out of its loop: no need to force anything
        clean_up(show_progress=True)
    return app.return_code or 0


def session_started(config: LabConfig, prefix: str) -> SessionStarted:
    return SessionStarted(
        time.time(), config.queue, prefix, config.mode.prefetch, config.mode.ack, config.durable, mask_url(config.url)
    )


def replay_main(argv: list[str]) -> int:
    """Reopen a saved session (events.jsonl, or the folder holding it) read-only, without a broker."""
    parser = argparse.ArgumentParser(prog="dispatch-lab replay", description=replay_main.__doc__)
    parser.add_argument("file", type=Path, help="events.jsonl from Ctrl+S or compare --out, or its folder")
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
    model.apply_all(items)
    end = max(getattr(item, "ts", 0.0) for item in items)
    from tui.app import DispatchLab

    config = LabConfig(url=model.broker or "replay", queue=model.queue_name, durable=model.durable, mode=model.mode)
    DispatchLab(config, model, None, clock=lambda: end, title=f"replay of {path}").run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
