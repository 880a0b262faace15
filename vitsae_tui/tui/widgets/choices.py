"""Select helpers shared by the screens."""

from __future__ import annotations

from textual.widgets import Select


def refill_select(select: Select, options: list[tuple[str, str]]) -> None:
    """Replace a Select's options, keeping the current choice when it still exists, else choosing the first."""
    current = select.value
    select.set_options(options)
    values = [value for _label, value in options]
    if current in values:
        select.value = current
    elif values:
        select.value = values[0]
