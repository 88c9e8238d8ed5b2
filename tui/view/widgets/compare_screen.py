"""Provides CompareScreen: run one scenario under several prefetch values, and show the runs side by side."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, LoadingIndicator, Select, Static

from tui.engine.runner import RunResult
from tui.model.scenarios import Scenario
from tui.teaching.compare import checks, compare_modes, prefetch_list, prefetch_note, table, verdict
from tui.text import ERROR_CHARS, for_toast
from workers.settings import ACK_MODES, AckMode, SettingsError, check_ack


class CompareScreen(ModalScreen[None]):
    """Shows comparisons while they run and after; tui.teaching.compare runs them, each on a fresh queue of its own."""

    BINDINGS = [Binding("escape", "close", "Close")]

    def __init__(
        self,
        url: str,
        presets: dict[str, Scenario],
        results: list[list[RunResult]],
        *,
        workers: int = 2,
        seconds_per_dot: float = 0.2,
        ack: AckMode = AckMode.MANUAL,
    ) -> None:
        super().__init__()
        self.url = url
        self.presets = presets
        self.results = results
        """Every comparison run in this session, newest last (kept by the app across openings)."""
        self.worker_count = workers
        self.seconds_per_dot = seconds_per_dot
        self.ack = ack

    def compose(self) -> ComposeResult:
        with Vertical(id="compare-body"):
            with Horizontal(id="compare-form"):
                yield Label("scenario", classes="caption")
                options = [(Text(for_toast(name)), name) for name in self.presets]  # a string prompt is markup
                yield Select(options, value="odd-heavy" if "odd-heavy" in self.presets else options[0][1],
                             allow_blank=False, id="compare-scenario")  # fmt: skip
                yield Label("prefetch", classes="caption")
                yield Input("0,1", id="compare-modes", restrict=r"[0-9, ]*")
                yield Label("ack", classes="caption")
                # Never-acked runs never finish: only the modes that ack are offered.
                acks = [(Text(mode.value), mode.value) for mode in ACK_MODES if mode.acked]
                yield Select(acks, value=self.ack.value, allow_blank=False, id="compare-ack")
                yield Button("Run", id="compare-run", variant="primary")
            yield Label(self._settings(), id="compare-status")
            yield LoadingIndicator(id="compare-busy")
            with VerticalScroll(id="compare-results"):
                yield Static(id="compare-table")

    def _settings(self) -> Text:
        """What the next run uses, the ack mode named; and when that mode makes prefetch meaningless, that too."""
        text = Text(f"{self.worker_count} workers, {self.seconds_per_dot:g} s/dot, ")
        text.append(self.ack.words, "bold")
        text.append(", fresh queue per run")
        note = prefetch_note(self.ack)
        if note:
            text.append(f"\n{note}", "bold yellow")
        return text

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "compare-ack" and isinstance(event.value, str):
            self.ack = check_ack(event.value)
            self.query_one("#compare-status", Label).update(self._settings())

    def on_mount(self) -> None:
        self.query_one("#compare-busy").display = False
        self.query_one("#compare-run", Button).focus()
        self._show()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self._start()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._start()

    def _start(self) -> None:
        status = self.query_one("#compare-status", Label)
        try:
            modes = prefetch_list(self.query_one("#compare-modes", Input).value)
        except ValueError as exc:
            message = str(exc) if isinstance(exc, SettingsError) else "Modes are prefetch numbers, like 0,1,10."
            status.update(Text(message, "bold red"))
            return
        scenario = self.presets[str(self.query_one("#compare-scenario", Select).value)]
        self.query_one("#compare-run", Button).disabled = True
        self.query_one("#compare-busy").display = True
        self.run_comparison(scenario, modes)

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def run_comparison(self, scenario: Scenario, modes: list[int]) -> None:
        """Waits for tui.teaching.compare on a thread of its own: the runs take seconds to minutes."""

        def say(text: str) -> None:
            self.app.call_from_thread(self._status, text)

        runs, error = compare_modes(self.url, scenario, modes, ack=self.ack, workers=self.worker_count,
                                    seconds_per_dot=self.seconds_per_dot, progress=say)  # fmt: skip
        self.app.call_from_thread(self._finished, runs, error)

    def _status(self, text: str) -> None:
        """Show a line that may hold a scenario's name or an error's text: as text, never as markup."""
        self.query_one("#compare-status", Label).update(Text(for_toast(text, ERROR_CHARS)))

    def _finished(self, runs: list[RunResult], error: str) -> None:
        self.query_one("#compare-run", Button).disabled = False
        self.query_one("#compare-busy").display = False
        if runs:
            self.results.append(runs)
        self._status(error or f"Done: {len(runs)} run(s). Earlier comparisons are below the newest.")
        self._show()

    def _show(self) -> None:
        if not self.results:
            self.query_one("#compare-table", Static).update(
                Text("No comparison yet: pick a scenario and prefetch values, then Run.", "dim")
            )
            return
        parts: list[Table | Text] = []
        for runs in reversed(self.results):
            parts.extend([table(runs), checks(runs), Text(verdict(runs) + "\n", "bold")])
        self.query_one("#compare-table", Static).update(Group(*parts))

    def action_close(self) -> None:
        self.dismiss(None)
