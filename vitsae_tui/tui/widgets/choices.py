"""Select helpers shared by the screens."""

from __future__ import annotations

from textual.widgets import Select
from textual.widgets.select import InvalidSelectValueError


def refill_select(select: Select, options: list[tuple[str, str]], preferred: str | None = None) -> None:
    """Replace a Select's options and choose `preferred` if offered, else keep the current choice, else the first.

    A disabled Select (a form locked while its job runs) keeps the job's value.
    """
    current = select.value
    select.set_options(options)
    values = [value for _label, value in options]
    if preferred in values and not select.disabled:
        select.value = preferred
    elif current in values:
        select.value = current
    elif values:
        select.value = values[0]


def choose(select: Select, value: object) -> bool:
    """Select `value` when the Select offers it; False (and no change) when it does not."""
    try:
        select.value = value
    except InvalidSelectValueError:
        return False
    return True
