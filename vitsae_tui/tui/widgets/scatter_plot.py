"""A scatter of named point groups on log10 or linear axes, one colour per group, the selected point marked."""

from __future__ import annotations

import math

from textual_plotext import PlotextPlot

COLORS = ("cyan", "orange", "magenta", "green", "red", "blue")
"""plotext's colour per group, in order; the screen draws the key itself (a legend inside a small plot hides points)"""
RICH_COLORS = {
    "cyan": "cyan",
    "orange": "dark_orange",
    "magenta": "magenta",
    "green": "green",
    "red": "red",
    "blue": "blue",
}


class ScatterPlot(PlotextPlot):
    def __init__(self, title: str, xlabel: str, ylabel: str, log_x: bool = True, log_y: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.log_x, self.log_y = log_x, log_y
        self.groups: dict[str, list[tuple[float, float]]] = {}
        self.selected: tuple[float, float] | None = None
        self.drawn_points = 0
        """points drawn at the last redraw (finite, and positive on a log axis), for tests"""

    def _axis(self, value: float, log: bool) -> float | None:
        if not math.isfinite(value) or (log and value <= 0):
            return None
        return math.log10(value) if log else value

    def _point(self, x: float, y: float) -> tuple[float, float] | None:
        px, py = self._axis(x, self.log_x), self._axis(y, self.log_y)
        return None if px is None or py is None else (px, py)

    def show(self, groups: dict[str, list[tuple[float, float]]], selected: tuple[float, float] | None) -> None:
        """Replace every point (log axes are drawn as log10 values on linear axes: plotext's own log scale
        re-applies itself on every rebuild) and redraw once."""
        self.groups, self.selected = groups, selected
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title)
        plt.xlabel(("log10 " if self.log_x else "") + self.xlabel)
        plt.ylabel(("log10 " if self.log_y else "") + self.ylabel)
        drawn = 0
        for color, points in zip(COLORS, groups.values()):
            kept = [p for p in (self._point(x, y) for x, y in points) if p is not None]
            if kept:
                plt.scatter([x for x, _ in kept], [y for _, y in kept], color=color, marker="dot")
                drawn += len(kept)
        mark = self._point(*selected) if selected is not None else None
        if mark is not None:
            plt.scatter([mark[0]], [mark[1]], color="white", marker="◉")  # drawn last: on top of its group's dot
        self.drawn_points = drawn
        self.refresh()
