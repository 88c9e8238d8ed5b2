"""Tests ``dispatch-lab serve`` in a real browser: headless Chromium (Debian's package) driven by Playwright."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, SPAWNED, child_env, wait_until
from tui.serve import is_loopback, tab_command, without_url
from workers.local_node import free_ports, port_open
from workers.new_task import Publisher

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
QUEUE_PANEL = {"x": 0, "y": 20, "width": 430, "height": 220}
"""Where the queue's figures are drawn in a 1280x800 tab (the left panel, below the header)."""


def test_the_tabs_command_holds_no_url_and_watches_only() -> None:
    args = ["--queue", "q", "--url", "amqp://u:secret@h/%2F", "--url=amqp://u:secret@h", "--report", "--watch-only"]
    assert without_url(args) == ["--queue", "q", "--report", "--watch-only"]
    command = tab_command(args)
    assert "secret" not in command and "amqp" not in command
    assert command.count("--watch-only") == 1 and "--report" not in command and "--queue q" in command
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


def _processes(pattern: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True, check=False)
    return found.stdout.split()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_a_browser_tab_draws_the_dashboard_and_a_figure_moves_when_a_task_is_published(
    broker_url: str, queue_name: str, tmp_path: Path
) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    port = free_ports(1)[0]
    argv = [sys.executable, "-m", "tui.cli", "serve", "--port", str(port), "--workers", "1"]
    argv += ["--queue", queue_name, "--transient", "--seconds-per-dot", "0"]
    server = subprocess.Popen(
        argv, cwd=ROOT, env=child_env(broker_url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    SPAWNED.append(server)  # type: ignore[arg-type]
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 30, "the server's port")
        with playwright.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            # A fresh profile: Playwright passes it to Chromium as --user-data-dir.
            browser = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 800},
            )
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                html = page.content()
                assert "guest" not in html and "amqp" not in html, "the broker URL reached the browser"
                page.mouse.click(640, 400)  # the start box
                # The app's first bytes hide the start box; a drawn dashboard is no blank page.
                page.wait_for_function("document.body.classList.contains('-first-byte')", timeout=30_000)
                shot = tmp_path / "dispatch-lab-serve.png"  # to look at: pytest keeps the last runs' tmp_path

                def drawn() -> bool:
                    return len(page.screenshot(path=str(shot))) > 30_000

                wait_until(drawn, 30, "a drawn dashboard (a blank 1280x800 page is a few kB)")
                assert "Traceback" not in page.evaluate("document.body.innerText")

                def steady() -> bytes | None:
                    first = page.screenshot(clip=QUEUE_PANEL)
                    time.sleep(0.7)  # two looks apart: the panel redraws a few times a second
                    return first if page.screenshot(clip=QUEUE_PANEL) == first else None

                before = wait_until(steady, 30, "the queue panel to settle (the worker ready)")
                with Publisher(broker_url, queue_name, durable=False) as publisher:
                    for i in range(3):
                        publisher.publish(f"served {i}")
                wait_until(lambda: page.screenshot(clip=QUEUE_PANEL) != before, 20, "the figures to move")
                page.screenshot(path=str(shot))
            finally:
                browser.close()
        # The tab's dashboard ends with its connection.
        wait_until(lambda: not _processes(f"--watch-only --queue {queue_name}"), 20, "the tab's dashboard to end")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            out, _ = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            out, _ = server.communicate()
            raise AssertionError("serve did not end on SIGTERM") from None
    assert "guest" not in out, "the URL was printed"
    wait_until(lambda: not _processes(f"--queue {queue_name}"), 10, "no worker or dashboard left")
