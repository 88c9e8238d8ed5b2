"""Provides WorkerCard: one worker's counts, current task and last lines, in the tutorial's words."""

from __future__ import annotations

import re

from rich.text import Text
from textual.app import ComposeResult
from textual.css.scalar import Unit
from textual.css.tokenize import IDENTIFIER
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static

from tui.model.state import CurrentTask, WorkerState, WorkerStatus
from tui.text import for_toast, printable


def status_class(status: WorkerStatus) -> str:
    """The card's class for a status (app.tcss styles each): the dead look alike, and so does every broken link."""
    if not status.alive:
        return "-dead"
    return "-reconnecting" if status.broker_stepped_in else f"-{status}"


STATUS_CLASSES = tuple(sorted({status_class(status) for status in WorkerStatus}))
_ID = re.compile(IDENTIFIER)
NAME_CHARS = 24
"""A card's title shows this much of a worker's name at most: its status must stay in view."""


def progress_bar(fraction: float, width: int = 8) -> str:
    """A text bar, so a refresh costs a string, not a widget tree."""
    filled = max(0, min(width, round(fraction * width)))
    return "▰" * filled + "▱" * (width - filled)


def describe_status(worker: WorkerState, now: float) -> str:
    silent = worker.silent_for(now)
    if silent is not None and worker.remote:
        # A process on another machine: its silence may be a closed laptop as well as a hang.
        return f"silent for {silent:.0f}s"
    if silent is not None:
        dropped = worker.dropped_in(now)
        countdown = f", broker drops it in ~{dropped:.0f}s" if dropped else ", broker should drop it now"
        return f"UNRESPONSIVE {silent:.0f}s{countdown}"
    if worker.status is WorkerStatus.EXITED:
        return f"exited, code {worker.exit_code}"
    if worker.status is WorkerStatus.RECONNECTING:
        return f"reconnecting, attempt {worker.connection_attempt}"
    return str(worker.status)


class WorkerCard(Widget, can_focus=True):
    """A card per worker; click or focus selects it."""

    class Selected(Message):
        """The user picked this card."""

        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

    def __init__(self, worker_name: str) -> None:
        # A name from a replayed log may be anything; only a name fit for an id gives the card one.
        card_id = f"card-{worker_name}"
        super().__init__(id=card_id if _ID.fullmatch(card_id) else None, classes="worker-card")
        self.worker_name = worker_name
        self._borders: tuple[str, str] = ("", "")
        self._head_part = Static(classes="head")
        self._row_part = Static(classes="row")
        self._counts_part = Static(classes="counts")
        self._task_part = Static(classes="task")
        self._log_part = Static(classes="log")

    def compose(self) -> ComposeResult:
        # A compact row (app.tcss shows it where space is short) draws the head and the row; a card the rest.
        yield self._head_part
        yield self._row_part
        yield self._counts_part
        yield self._task_part
        yield self._log_part

    def mark_selected(self, chosen: bool) -> None:
        """Show this worker as the selected one, or stop: a row on its head line, a card on its border (app.tcss).

        Only the part that shows it is restyled, and at once (a key press waits for it). Restyling
        the card re-drew every part of it beneath the mark: on two cores busy with an 8-worker
        flood, most of a key press's time (key_latency_8 in docs/benchmarks.md).
        """
        if self.has_class("-selected") == chosen:
            return
        self.set_class(chosen, "-selected", update=False)
        self._head_part.set_class(chosen, "-selected", update=False)
        if self.is_mounted:
            shown_on: Widget = self._head_part if self._head_part.display else self
            self.app.stylesheet.update_nodes([shown_on], animate=False)

    def on_click(self) -> None:
        self.post_message(self.Selected(self.worker_name))

    def on_focus(self) -> None:
        self.post_message(self.Selected(self.worker_name))

    def show(self, worker: WorkerState, now: float, *, details: bool = True) -> None:
        """Render the worker: each part is compared with what it shows, and only a part that reads differently is drawn.

        With ``details=False`` only the title, status and counts: the task and log lines
        wait for the next full show (the dashboard draws them less often in a flood).
        """
        silent = worker.silent_for(now)
        mode = "mode ?" if worker.prefetch is None else (
            f"prefetch {worker.prefetch or '∞ (0)'} · {worker.ack} ack"
        )  # fmt: skip
        if worker.on_fail is not None and not worker.on_fail.requeues:  # the default goes unsaid
            mode += f" · on fail {worker.on_fail}"
        if worker.remote:  # whether F4 and the mode keys reach it (worker --accept-control): first, a card cuts the end
            mode = ("control · " if worker.control else "no control · ") + mode
        name = for_toast(worker.name, NAME_CHARS)
        where = f"remote {for_toast(worker.host, NAME_CHARS)}:{worker.pid or '?'}" if worker.remote else (
            f"pid {worker.pid or '-'}"
        )  # fmt: skip
        status_words = describe_status(worker, now)  # the card's title and a compact row's head
        borders = (f"{name} · {where} · {status_words}", mode)
        if borders != self._borders:  # setting a title repaints the whole card, even to the same title
            self._borders = borders
            # As Text: a title given as a string is read as markup, and a worker's name is outside text.
            self.border_title, self.border_subtitle = Text(borders[0]), Text(borders[1])
        self.set_class(silent is not None, "-unresponsive")
        self.set_class(worker.remote, "-remote")
        status = status_class(worker.status)
        if not self.has_class(status):
            # One atomic change, and only when the status changed: each change restyles the card's subtree.
            self.update_classes({**dict.fromkeys(STATUS_CLASSES, False), status: True})
        counts = Text.assemble(
            ("received ", "dim"), (f"{worker.received:<7}", "bold"),
            ("done ", "dim"), (f"{worker.done}", "bold"),
            (" failed " if worker.failed else "", "dim"), (f"{worker.failed or ''}", "bold red"),
            ("\nholds    ", "dim"), (f"{worker.in_hand:<7}", "bold cyan" if worker.in_hand else "bold"),
            ("redelivered ", "dim"), (f"{worker.redelivered}", "bold yellow" if worker.redelivered else "bold"),
        )  # fmt: skip
        row = Text.assemble(
            ("received ", "dim"), (f"{worker.received}", "bold"),
            (" done ", "dim"), (f"{worker.done}", "bold"),
            (" holds ", "dim"), (f"{worker.in_hand}", "bold cyan" if worker.in_hand else "bold"),
            (" redelivered ", "dim"), (f"{worker.redelivered}", "bold yellow" if worker.redelivered else "bold"),
        )  # fmt: skip
        extra = Text()
        if worker.returned:
            extra.append(f" returned {worker.returned}", "dim")
        if worker.unacked_done:
            extra.append(f" never acked {len(worker.unacked_done)}", "bold red")
        if worker.ack_lost:
            extra.append(f" ack lost {worker.ack_lost}", "bold red")
        if worker.dropped:
            extra.append(f" dropped {worker.dropped} events", "bold red")
        _put(self._counts_part, counts + extra)
        shown = self._task_part.content
        task = self._task_line(worker, now) if details else shown if isinstance(shown, Text) else Text()
        if self._head_part.display:  # a compact row (app.tcss decides where): a card leaves these two alone
            remote = (
                f"remote {for_toast(worker.host, NAME_CHARS)}" + ("" if worker.control else " (no control)")
                if worker.remote
                else ""
            )  # a row has no subtitle: whether F4 and the mode keys reach it is said here
            if self._row_part.display:
                _put(self._row_part, row + extra)
                # Its first line: who, in what state, and the task at hand (as the card's task line).
                head = Text.assemble((name, "bold"), (f"{' · ' if remote else ''}{remote} · {status_words}", "dim"))
            else:  # a line a worker (a class, WorkerGrid's -crowded): the counts first, where the line is not cut
                head = Text.assemble(
                    (name, "bold"), (f" · {status_words} · ", "dim"),
                    ("done ", "dim"), (f"{worker.done}", "bold"),
                    (" holds ", "dim"), (f"{worker.in_hand}", "bold cyan" if worker.in_hand else "bold"),
                )  # fmt: skip
                if worker.redelivered:
                    head.append(" redelivered ", "dim")
                    head.append(f"{worker.redelivered}", "bold yellow")
                head.append_text(extra)
            if task.plain and task.plain != status_words:  # an idle row said "idle · idle"
                head.append(" · ")
                head.append_text(task)
            if remote and not self._row_part.display:
                head.append(f" · {remote}", "dim")
            _put(self._head_part, head)
        if not details:
            return
        _put(self._task_part, task)
        # The last lines that fit the part (its height is set in app.tcss, and read here, not assumed).
        room = _height(self._log_part, len(worker.log))
        lines = list(worker.stderr)[-3:] if worker.stderr and not worker.alive else []
        log = Text("\n".join(printable(line) for line in list(worker.log)[-room:]))
        if lines:
            log.append("\n" + "\n".join(printable(line) for line in lines), "red")
        _put(self._log_part, log)

    @staticmethod
    def _task_line(worker: WorkerState, now: float) -> Text:
        current = worker.current
        finishing = worker.finishing
        if current is None and finishing is not None:
            # The broker took it back (ack timeout) and hands it out again; the work here goes on.
            elapsed = max(0.0, now - finishing.started)
            text = Text(f"{finishing.label} taken back by the broker, finishing ", "bold yellow")
            if finishing.seconds > 0:
                text.append(progress_bar(min(1.0, elapsed / finishing.seconds)), "yellow")
                text.append(f" {elapsed:.1f}/{finishing.seconds:.1f}s")
            return text
        if current is None:
            if worker.status is WorkerStatus.STOPPING:
                return Text("stopping: finishing nothing, giving back the rest", "dim")
            return Text("idle" if worker.alive else "", "dim")
        elapsed = max(0.0, now - current.started)
        waiting = worker.waiting
        label = printable(current.label)  # another publisher's message id
        if current.seconds <= 0:
            text = Text(f"{label} working", "bold")
        else:
            fraction = min(1.0, elapsed / current.seconds)
            left = max(0.0, current.seconds - elapsed)
            text = Text(f"{label} ", "bold")
            # The deadline first: on a narrow card the end of the line is cut off.
            deadline = _deadline(current, now)
            if deadline:
                text.append_text(deadline)
                text.append(" ")
            text.append(progress_bar(fraction), "green")
            text.append(f" {elapsed:.1f}/{current.seconds:.1f}s")
            if left > 60:
                text.append(f" ETA {_duration(left)}", "dim")
        if waiting:
            text.append(f" +{waiting} waiting", "bold yellow")
        return text


LONG_TASK = 60.0
"""Seconds of work from which a task's acknowledgement deadline is shown (or half the deadline, if sooner)."""


def _deadline(current: CurrentTask, now: float) -> Text:
    """The time left before the broker's acknowledgement deadline, for a long task; empty for a short one.

    The deadline counts from the delivery (a task waiting in the window spends it too);
    RabbitMQ 3.x checks it once per channel tick, so the close can come a tick later.
    """
    deadline = current.deadline
    if deadline is None or current.seconds < min(LONG_TASK, deadline / 2):
        return Text("")
    left = current.delivered + deadline - now
    finish = current.started + current.seconds - now
    how = current.deadline_source.split(" ", 1)[0].rstrip(":")  # set, told or assumed (Model.ack_deadline)
    style = "bold red" if left < finish else "yellow"
    if left <= 0:
        return Text(f"ack deadline passed ({how})", style)
    shown = f"{left:.0f}s" if left < 120 else _duration(left)
    return Text(f"ack in {shown} ({how})", style)


def _height(part: Static, otherwise: int) -> int:
    """How many lines a part of fixed height holds, as the stylesheet sets it; ``otherwise`` when it sets none."""
    height = part.styles.height
    if height is None or height.unit is not Unit.CELLS:
        return otherwise
    return max(1, int(height.value))


def _put(part: Static, text: Text) -> None:
    """Show ``text`` in a part unless it shows it already: mostly only the task line moves from one draw to the next.

    The parts are of fixed size (see app.tcss): a new text needs a repaint, never a layout.
    """
    shown = part.content
    if isinstance(shown, Text) and (shown.plain, shown.style, shown.spans) == (text.plain, text.style, text.spans):
        return
    part.update(text, layout=False)


def _duration(seconds: float) -> str:
    """3 min, 2.5 h, 4.1 days: an honest ETA for very long tasks."""
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
