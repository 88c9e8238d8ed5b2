"""Provides ``dispatch-lab serve``: the dashboard in browsers, every tab a watch-only viewer of one queue.

textual-serve runs one copy of a command per browser tab. Here that command is
``dispatch-lab --watch-only``: each tab follows the workers that report on the
events exchange and starts none. One dashboard owns the workers: the teacher's
terminal (``dispatch-lab --report``), or this process (``serve --workers N``,
headless, its workers reporting). The broker URL travels to the tabs in the
environment (AMQP_URL): textual-serve prints its command on its start page.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import shlex
import sys
import threading
from dataclasses import replace

from rich.console import Console

from tui.engine.backend import Backend
from tui.launch import parse_config, preflight, start_private_node
from workers.broker import BrokerError
from workers.local_node import LocalNode, LocalNodeError
from workers.settings import URL_ENV

DRAIN_EVERY = 0.5
"""Seconds between two emptyings of the headless owner's inbox: it shows nothing, and must not hold it all."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatch-lab serve",
        description="Serve the dashboard to browsers (textual-serve): every tab watches the queue, none runs workers. "
        "Other options are the dashboard's (--queue, --url, ...).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--workers", type=int, default=0, help="workers this process runs for the class, reporting (default 0)"
    )
    return parser


def without_flag(args: list[str], flag: str) -> list[str]:
    """``args`` without ``flag`` and its value, given as ``flag VALUE`` or ``flag=VALUE``."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def without_url(args: list[str]) -> list[str]:
    """The dashboard options without ``--url``: the URL goes through the environment, never a command line."""
    return without_flag(args, "--url")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tab_command(dashboard_args: list[str]) -> str:
    """The command each tab runs: a watch-only dashboard of the same queue, on the broker the environment names."""
    args = [a for a in without_url(dashboard_args) if a not in ("--watch-only", "--report")]
    return shlex.join([sys.executable, "-m", "tui", "--watch-only", *args, "--broker", "url"])


def main(argv: list[str]) -> int:
    console = Console(stderr=True)
    own, dashboard_args = build_parser().parse_known_args(argv)
    if own.workers < 0:
        build_parser().error(f"--workers must be 0 or more, not {own.workers}")
    try:
        from textual_serve.server import Server
    except ImportError:
        console.print("dispatch-lab serve: textual-serve is not installed: pip install textual-serve", markup=False)
        return 2
    config = parse_config([*dashboard_args, "--workers", "0"], console)
    node: LocalNode | None = None
    owner: Backend | None = None
    try:
        if config.private_broker:
            config, node = start_private_node(config, console)
        management = preflight(config, console)
    except (BrokerError, LocalNodeError) as exc:
        console.print(f"dispatch-lab serve: {exc}", highlight=False, markup=False, soft_wrap=True)
        if node is not None:
            node.destroy()
        return 1
    # The tabs inherit this environment: the URL (and its password) never appears in a command.
    os.environ[URL_ENV] = config.url
    if not is_loopback(own.host):
        console.print(
            f"[yellow]Warning: serving on {own.host}: anyone who can reach this machine on port {own.port} "
            "watches the class (they cannot change anything, and never see the broker's password).[/]",
            soft_wrap=True,
        )
    stop_draining = threading.Event()
    try:
        if own.workers:
            owner = Backend(
                replace(config, workers=own.workers, report=True, hear_reports=False), management=management
            )
            owner.start()
            threading.Thread(target=_drain, args=(owner, stop_draining), name="drain", daemon=True).start()
        server = Server(
            tab_command(_no_broker_flag(dashboard_args)), host=own.host, port=own.port, title="dispatch-lab"
        )
        # textual-serve logs at INFO to the console: pika's connection chatter is not for the teacher.
        logging.getLogger("pika").setLevel(logging.WARNING)
        server.serve()
    finally:
        stop_draining.set()
        if owner is not None:
            owner.shutdown()
        if node is not None:
            node.destroy()
    return 0


def _no_broker_flag(args: list[str]) -> list[str]:
    """Without ``--broker X``: the tabs use the URL's broker (a private node is this process's)."""
    return without_flag(args, "--broker")


def _drain(owner: Backend, stop: threading.Event) -> None:
    """The headless owner shows nothing: what its workers say is on the events exchange for the tabs."""
    while not stop.wait(DRAIN_EVERY):
        owner.inbox.drain()  # decoded, so the pool's count of undecoded bytes falls and it keeps reading
