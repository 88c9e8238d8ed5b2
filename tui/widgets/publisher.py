"""Provides PublisherPane: type a task and a count, or pick a preset, and publish."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Button, Input, Label

from tui.scenarios import Scenario
from tui.text import for_toast, quoted

MAX_COUNT = 100_000


class PublisherPane(Horizontal):
    """The publisher: each dot in a task is seconds-per-dot of work."""

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
        yield Label("task", classes="caption")
        yield Input(value="Hello...", placeholder="Hello... (each dot = work)", id="task-body")
        yield Label("×", classes="caption")
        yield Input(value="1", id="task-count", restrict=r"[0-9]*", max_length=6)
        yield Button("Send", id="send", variant="primary")
        for name in self.presets:
            yield Button(name, id=f"preset-{name}", classes="preset", tooltip=self.presets[name].description)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._send_typed()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        button_id = event.button.id or ""
        if button_id == "send":
            self._send_typed()
        elif button_id.startswith("preset-"):
            scenario = self.presets[button_id.removeprefix("preset-")]
            self.post_message(self.PublishTasks(list(scenario.tasks), for_toast(scenario.name), scenario))

    def _send_typed(self) -> None:
        body = self.query_one("#task-body", Input).value or "Hello World!"
        count_text = self.query_one("#task-count", Input).value
        count = int(count_text) if count_text.isdigit() else 1
        if not 1 <= count <= MAX_COUNT:
            self.app.notify(f"Count must be between 1 and {MAX_COUNT}.", severity="warning")
            return
        self.post_message(self.PublishTasks([body] * count, f"{quoted(body)} ×{count}"))
