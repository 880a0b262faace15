"""Round, evenly spaced axis ticks for the plots (plotext's own fall on arbitrary values such as 145.7, 109.3), by
value on log axes (the plots draw log10 values on a linear axis)."""

from __future__ import annotations

import math


def nice_step(span: float, count: int) -> float:
    """The 1-2-5 step that cuts `span` into about `count` intervals."""
    raw = span / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def linear_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Round ticks from a multiple of the step at or below `low` to one at or above `high`."""
    if not high > low:
        low, high = low - (abs(low) * 0.1 or 1.0), high + (abs(high) * 0.1 or 1.0)
    step = nice_step(high - low, count)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def log_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Ticks in log10 units at whole decades (or 1-2-5 of a decade when the range is under one)."""
    if high - low >= 1:
        step = max(1, math.ceil((math.ceil(high) - math.floor(low)) / max(count, 1)))
        return [float(k) for k in range(math.floor(low), math.ceil(high) + 1, step)]
    decade = math.floor(low)
    candidates = [math.log10(m * 10**d) for d in (decade - 1, decade, decade + 1) for m in (1, 2, 5)]
    inside = [t for t in candidates if low - 1e-9 <= t <= high + 1e-9]
    below = max((t for t in candidates if t < low), default=low)
    above = min((t for t in candidates if t > high), default=high)
    return [below, *inside, above]


def tick_label(value: float, log: bool) -> str:
    """A tick's label: the value itself (10^value on a log axis), short and round."""
    shown = 10**value if log else value
    if shown == 0:
        return "0"
    if abs(shown) >= 1e4 or abs(shown) < 1e-3:
        return f"{shown:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{shown:.6g}"


def ticks(low: float, high: float, log: bool, count: int = 4) -> tuple[list[float], list[str]]:
    values = log_ticks(low, high, count) if log else linear_ticks(low, high, count)
    return values, [tick_label(v, log) for v in values]
