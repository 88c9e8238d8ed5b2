"""Provides outside text made fit to show: control characters escaped, and cut short for a toast.

Task bodies, worker, queue and host names, broker reasons and exception texts come
from outside. Every view shows them as text, never as markup: in ``rich.text.Text``
objects or with ``markup=False``, after one of these helpers has escaped what a
terminal would act on (ESC, NUL, carriage returns, tabs, line breaks) the way
Python's ``repr`` escapes it, which is how the worker cards quote a received body.
"""

from __future__ import annotations

TOAST_CHARS = 60
"""A toast shows at most about this many characters of a body or a name (a 1 MB body filled the screen)."""

ERROR_CHARS = 400
"""A toast shows at most this many characters of an error's text: a sentence, never a log."""


def printable(text: str) -> str:
    """``text`` with every character ``repr`` would escape (control characters, ESC, NUL, ...) escaped as it does.

    Everything printable, wide characters included, is left as it is; on printable text this is the identity.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def for_toast(text: str, limit: int = TOAST_CHARS) -> str:
    """Outside text for a toast (or any one-line place): printable, at most ``limit`` characters, ``…`` at a cut."""
    shown = printable(text[: limit + 1])  # nothing past the limit can show: a 1 MB body is never escaped whole
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def quoted(body: str, limit: int = TOAST_CHARS) -> str:
    """A body quoted as the cards quote it (``repr``): at most ``limit`` characters and the quotes, ``…`` at a cut."""
    head = body[:limit]
    shown = for_toast(repr(head), limit + 2)
    return shown if len(head) == len(body) or shown.endswith("…") else shown + "…"
