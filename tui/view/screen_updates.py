"""Provides the one place the dashboard hooks a private part of Textual: hearing of each screen update.

Textual hands every screen update to its driver through ``App._display``; no public
event says "what you changed is on the terminal now". ``call_after_refresh`` was not
enough: when the screen went idle before a restyled card had asked for a repaint, its
callback ran before the update that showed the card (a test caught it 1 time in 5).
tests/test_app.py::test_textual_still_hands_each_screen_update_to_app_display fails
when Textual renames or stops calling the hook; the view loop would then only wait
INPUT_WAIT after each key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import RenderableType
from textual.app import App
from textual.screen import Screen

HOOK = "_display"


def call_after_each_screen_update(app: App[Any], callback: Callable[[], None]) -> None:
    """Have ``callback`` called right after each screen update ``app`` hands to its driver."""
    handed_over: Callable[[Screen[Any], RenderableType | None], None] = getattr(app, HOOK)

    def display(screen: Screen[Any], renderable: RenderableType | None) -> None:
        handed_over(screen, renderable)
        callback()

    setattr(app, HOOK, display)
