"""Strings from data or the workspace (labels, class and file names, paths, messages that quote them), made safe to
show in a terminal or a picture: control characters and bidi overrides escaped, never a wall of text.

Markup is the other half: callers pass these strings to Rich and Textual as Text, never as markup.
"""

from __future__ import annotations

MAX_SHOWN = 200
MAX_MESSAGE = 1000
"""a message (which may quote a path or a file name) is longer than a name"""


def _escaped(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")  # ESC -> \x1b, newline -> \n, U+202E -> \u202e


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """`value` as text that cannot drive the terminal: every non-printable character (C0/C1 controls such as the
    ESC that starts an OSC 52 clipboard write, bidi overrides, line breaks) appears escaped; longer than `limit`
    characters, it is elided with an ellipsis."""
    text = str(value)[: 4 * limit]  # bounds the work on a huge string; the elision below still marks it
    safe = "".join(char if char.isprintable() else _escaped(char) for char in text)
    return safe if len(safe) <= limit and len(text) == len(str(value)) else safe[: limit - 1] + "…"


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
