"""Provides PublisherPane: type a task and a count, or pick a preset, and publish; a line says when it cannot."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label, Static

from tui.model.ledger import PUBLISHING
from tui.model.scenarios import Scenario
from tui.model.state import Model
from tui.text import for_toast, quoted
from workers.settings import DEFAULT_TASK

MAX_COUNT = 100_000


REASON_CHARS = 200
"""At most this much of a failure's reason is kept on the status line (it ends at the pane's edge anyway)."""

PRESET_MODIFIER = "alt+"
PRESET_KEYS = tuple(f"{PRESET_MODIFIER}{n}" for n in range(1, 10))
"""The preset buttons' keys, in their order, as shown. Ctrl+digit never reaches a terminal app (most terminals
send the bare digit); Alt+digit does, as ESC and the digit (tmux passes it on), and types nothing when bound."""
OPTION_DIGITS = "¡™£¢∞§¶•ª"
"""What Alt+1 … Alt+9 arrive as: Textual 8 reads ESC and a digit as macOS's Option+digit characters (its
sequence table maps them so), which a focused Input would type; a Mac without Option-as-Meta sends them too."""


def preset_binding_keys(index: int) -> str:
    """The keys a preset's binding listens to: its Alt+digit, and the character that arrives for it."""
    return f"{PRESET_KEYS[index]},{OPTION_DIGITS[index]}"


class TaskInput(Input):
    """An Input that leaves the presets' keys to the app.

    Textual drops every binding, priority ones too, for a key the focused Input may
    type (``check_consume_key``): the characters Alt+digit arrives as would be typed
    into the task instead of publishing the preset.
    """

    def check_consume_key(self, key: str, character: str | None) -> bool:
        return (character is None or character not in OPTION_DIGITS) and super().check_consume_key(key, character)


def preset_key(index: int) -> str | None:
    """The key of the preset at ``index`` (from 0), if it has one."""
    return PRESET_KEYS[index] if 0 <= index < len(PRESET_KEYS) else None


class PublisherPane(Vertical):
    """The publisher: each dot in a task is seconds-per-dot of work.

    Under the inputs, a status line shows while tasks wait for their confirm (how many
    were sent, confirmed, returned or refused), and when publishing is in trouble: the
    broker blocks it (a memory or disk alarm), or the last publish that failed and why.
    """

    class PublishTasks(Message):
        """Publish these task bodies, in order."""

        def __init__(self, bodies: list[str], label: str, scenario: Scenario | None = None) -> None:
            super().__init__()
            self.bodies = bodies
            self.label = label
            """What the toast calls them: outside text already made fit by ``tui.text`` (``quoted``, ``for_toast``)."""
            self.scenario = scenario

    def __init__(self, presets: dict[str, Scenario]) -> None:
        super().__init__(id="publisher")
        self.presets = presets

    def compose(self) -> ComposeResult:
        with Horizontal(id="publisher-row"):
            yield Label("task", classes="caption")
            yield TaskInput(value="Hello...", placeholder="Hello... (each dot = work)", id="task-body")
            yield Label("×", classes="caption")
            yield TaskInput(value="1", id="task-count", restrict=r"[0-9]*", max_length=6)
            yield Button("Send", id="send", variant="primary")
            if self.presets:
                # Each button shows its digit; "alt+" once before them (the row has no room for it on each).
                yield Label(Text(PRESET_MODIFIER, "bold"), classes="caption preset", id="preset-keys")
            for index, name in enumerate(self.presets):
                key = preset_key(index)
                # Text: a scenario's name comes from a file, and a string label is read as markup.
                label = Text.assemble((key.removeprefix(PRESET_MODIFIER), "bold"), f" {name}") if key else Text(name)
                tooltip = f"{self.presets[name].description} ({key})" if key else self.presets[name].description
                yield Button(label, id=f"preset-{name}", classes="preset", tooltip=tooltip)
        yield Static(id="publish-status", markup=False)

    def show(self, model: Model, now: float) -> None:
        """Show whether publishing is blocked or failed, from the model; nothing when all is well."""
        text = publish_status(model, now)
        self.set_class(bool(text), "-status")
        status = self.query_one("#publish-status", Static)
        shown = status.content
        if not isinstance(shown, Text) or (shown.plain, shown.spans) != (text.plain, text.spans):
            status.update(text)  # a long reason wraps onto a second line: a layout

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._send_typed()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        button_id = event.button.id or ""
        if button_id == "send":
            self._send_typed()
        elif button_id.startswith("preset-"):
            self.send_preset(button_id.removeprefix("preset-"))

    def send_preset(self, name: str) -> None:
        """Publish a preset, as its button does (its key and the palette come here too)."""
        scenario = self.presets.get(name)
        if scenario is not None:
            self.post_message(self.PublishTasks(list(scenario.tasks), for_toast(scenario.name), scenario))

    def _send_typed(self) -> None:
        body = self.query_one("#task-body", Input).value or DEFAULT_TASK
        count_text = self.query_one("#task-count", Input).value
        count = int(count_text) if count_text.isdigit() else 1
        if not 1 <= count <= MAX_COUNT:
            self.app.notify(f"Count must be between 1 and {MAX_COUNT}.", severity="warning")
            return
        self.post_message(self.PublishTasks([body] * count, f"{quoted(body)} ×{count}"))


def publish_status(model: Model, now: float) -> Text:
    """The status line: the broker's block and what waits behind it, else a burst's progress while tasks wait
    for their confirm, else the last failure and why; or empty."""
    blocked = model.publish_blocked
    if blocked is not None:
        waiting = model.ledger.count(PUBLISHING)
        text = Text("⏸ blocked by the broker: ", "bold red")
        text.append(for_toast(blocked, REASON_CHARS), "bold red")
        text.append(f" for {now - model.publish_blocked_since:.0f}s", "bold red")
        text.append(f" · sends wait: {waiting} unconfirmed", "yellow")
        return text
    ledger = model.ledger
    waiting = ledger.count(PUBLISHING)
    if waiting:
        text = Text(f"⇡ sent {ledger.published:,} · confirmed {ledger.confirmed:,}", "bold")
        text.append(f" · returned/refused {ledger.failed:,}", "bold red" if ledger.failed else "bold")
        text.append(f" · {waiting:,} unconfirmed", "yellow")
        return text
    failure = model.publish_failure
    if failure is None:
        return Text()
    label, reason = failure
    failed = model.ledger.failed
    text = Text(f"publish failed ({label}{f'; {failed} in all' if failed > 1 else ''}): ", "bold red")
    text.append(for_toast(reason, REASON_CHARS), "red")
    return text
