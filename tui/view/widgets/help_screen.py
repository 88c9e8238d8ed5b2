"""Provides HelpScreen: what each mode does and what to watch for."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

from tui.view.widgets.publisher import PRESET_KEYS
from workers.settings import AckMode, FailMode, QueueType

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
| Ctrl+F | on failure: requeue → reject → crash |
| Ctrl+R | move the dead letters back to the work queue |
| Ctrl+S | save events, ledger and a screenshot into runs/ |
| Ctrl+N / Ctrl+B | select next / previous worker (or click a card) |
| Ctrl+P | command palette (set prefetch to any number, presets, …) |
| Ctrl+Q | quit (every worker is stopped) |

## When a task fails (a body with `!`)

The worker works the dots before the `!`, then the task fails. What it does then
is its failure mode (`--on-fail`, Ctrl+F live):

| on fail | what the worker does | watch for |
| --- | --- | --- |
{fail_rows}

Under auto ack a failure tells the broker nothing (it forgot the task at
delivery: the task is **lost**); under no ack the task stays unacked. The tutorial's
default task, *Hello World!*, would fail here for its `!`: an empty task field sends *Hello World* instead.

## Queue types, delivery limits, dead letters

`--queue-type quorum` counts each message's deliveries (`x-delivery-count`, shown
in F9; measured on 3.10: a consumer's first delivery has no header, then 1, 2, …).
`--delivery-limit N`: a message returned more than N times (by nack, a crash, a
closed channel) is dead-lettered, or dropped without a target. RabbitMQ 4.0+
applies a limit of 20 to quorum queues by default; 3.x has none. With prefetch
above 1 and `crash`, the tasks waiting behind a poison task go back with it and
count toward the limit too: innocent tasks get dead-lettered with the bad one.
`--dead-letter` declares `<queue>.dead`: the panel shows how many and why
(`x-first-death-reason`); Ctrl+R moves them back. Quorum queues refuse global
QoS ({quorum_qos}) and prefetch 0 means {quorum_prefetch} ({classic_prefetch} on a classic queue).

## Acknowledgement timeout: there *are* message timeouts

The tutorial says "there aren't any message timeouts". Since 3.8.15 the broker
closes a channel whose oldest delivery stays unacked longer than `consumer_timeout`
(30 min by default; 3.x checks once per channel tick) with 406 PRECONDITION_FAILED,
and requeues everything it delivered there; an ack sent after that is lost
(*ack lost*: worked, never acknowledged). A card shows the deadline of a long
task (`set`: a private node started with `--ack-timeout`; `told`: `--ack-timeout`;
`assumed`: the default). RabbitMQ 4.3 no longer times out deliveries on classic
queues (not tested here). `dispatch-lab --broker private --ack-timeout 10` shows it.

## A class: workers on other machines
A student runs `dispatch-lab worker --report --queue <this queue>` against this broker
(`--accept-control` too, to let this screen steer it). Its card says **remote** and its
host: its counts, holds and log come from its own reports through the broker's
`dispatch-lab.events` exchange, a fraction of a second late, and what it did before
this dashboard started is not known here. A card that stops hearing from its worker says
*silent for Ns*; the worker's next report brings the same card back.

F3 and F5 cannot kill or start a process on another machine. F4 stops a remote worker
that accepts control; F6, F7 and Ctrl+F change the modes of every worker that does,
and the toast names the others (*no control* on their cards). `dispatch-lab serve`
shows this dashboard in browsers: those tabs only watch.
## Experiments

1. **Round-robin** (prefetch 0): send *tutorial*: w1 gets 1, 3, 5 and w2 gets 2, 4.
2. **Fair dispatch**: send *odd-heavy* at prefetch 0, then press F6 to 1 and send it again.
3. **Redelivery**: send long tasks, kill a busy worker with F3: its task comes back.
4. **Loss**: F7 to auto, send a backlog, kill a worker: the lost count rises.
5. **Poison task**: send `Bad task!` among others: requeue loops (failures/s in the panel);
   Ctrl+F to reject ends it; presets *nack-loop*, *poison* and *ack-timeout* show the rest.
""".format(
    ack_rows="\n".join(f"| **{mode.value}** | {mode.help[0]} | {mode.help[1]} |" for mode in AckMode),
    fail_rows="\n".join(f"| **{mode.value}** | {mode.help[0]} | {mode.help[1]} |" for mode in FailMode),
    last=len(PRESET_KEYS),
    quorum_qos="measured on 3.10: the whole connection is closed, 540" if not QueueType.QUORUM.global_qos else "",
    quorum_prefetch=QueueType.QUORUM.unlimited_prefetch,
    classic_prefetch=QueueType.CLASSIC.unlimited_prefetch,
)


class HelpScreen(ModalScreen[None]):
    """The help, over the dashboard."""

    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown(HELP)

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)
