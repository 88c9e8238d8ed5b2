"""Provides HelpScreen: what each mode does and what to watch for."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

from tui.view.widgets.publisher import PRESET_KEYS
from workers.settings import AckMode

HELP = """\
# dispatch-lab: what you are looking at

Real worker processes (RabbitMQ tutorial 2's `worker.py`) share one durable queue.
Each dot in a task is *seconds-per-dot* of work. Every number comes from a worker
or from the broker; the queue panel names each figure's source.

## Dispatch modes

| prefetch | what the broker does | watch for |
| --- | --- | --- |
| **0** (unlimited) | **round-robin**: every n-th message goes to the n-th worker as it arrives | with *odd-heavy*, one worker holds all heavy tasks while the other idles |
| **1** | **fair dispatch**: nothing new until the ack | both workers stay busy; light tasks never wait behind heavy ones |
| **N** | up to N unacked per worker | a card's *holds* shows its window: one working, the rest waiting |

| ack | meaning | watch for |
| --- | --- | --- |
{ack_rows}

A live change is *cancel, qos, consume* between tasks: waiting tasks are returned
and come back marked *redelivered*; the ledger calls that "returned by a mode
change", not a crash.

## Keys (they work while typing a task)

| key | action |
| --- | --- |
| F1 | this help |
| F2 | add a worker |
| F3 | kill the selected worker (SIGKILL, like a crash) |
| F4 | stop the selected worker gracefully |
| F5 | restart the selected worker |
| F6 | prefetch: 0 → 1 → 10 → 0 |
| F7 | ack mode: manual → auto → none |
| F8 | purge the queue's ready messages |
| F9 | the message ledger: every task's lifeline, lost ids, duplicates |
| F10 | restart the broker (only one dispatch-lab started itself): durability |
| F12 | compare modes: one scenario under several prefetch values, side by side (manual ack unless you pick another) |
| Alt+1 … Alt+{last} | publish the preset whose button shows that key (also in the palette: type its name) |
| Ctrl+S | save events, ledger and a screenshot into runs/ |
| Ctrl+N / Ctrl+B | select next / previous worker (or click a card) |
| Ctrl+P | command palette (set prefetch to any number, presets, …) |
| Ctrl+Q | quit (every worker is stopped) |

## Experiments

1. **Round-robin** (prefetch 0): send *tutorial*: w1 gets 1, 3, 5 and w2 gets 2, 4.
2. **Fair dispatch**: send *odd-heavy* at prefetch 0, then press F6 to 1 and send it again.
3. **Redelivery**: send long tasks, kill a busy worker with F3: its task comes back.
4. **Loss**: F7 to auto, send a backlog, kill a worker: the lost count rises.
""".format(
    ack_rows="\n".join(f"| **{mode.value}** | {mode.help[0]} | {mode.help[1]} |" for mode in AckMode),
    last=len(PRESET_KEYS),
)


class HelpScreen(ModalScreen[None]):
    """The help, over the dashboard."""

    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown(HELP)

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)
