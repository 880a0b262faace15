"""A scatter of named point groups on log10 or linear axes, one colour per group, the selected point marked."""

from __future__ import annotations

import math

from textual_plotext import PlotextPlot

from vitsae_tui.tui.widgets import axes

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
    def __init__(
        self,
        title: str,
        xlabel: str,
        ylabel: str,
        log_x: bool = True,
        log_y: bool = True,
        y_ceiling: float | None = None,
        **kwargs,
    ):
        """`y_ceiling`: a value the y axis never runs past (KL recovered cannot exceed 1)."""
        super().__init__(**kwargs)
        self.y_ceiling = y_ceiling
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.log_x, self.log_y = log_x, log_y
        self.groups: dict[str, list[tuple[float, float]]] = {}
        self.selected: tuple[float, float] | None = None
        self.axis_ticks: dict[str, tuple[list[float], list[str]]] = {}
        """each axis' (ticks, labels) at the last redraw, for tests"""
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
        # the y axis is named in the title (plotext writes a y label under the axis, where nobody looks)
        plt.title(f"{self.ylabel}{' (log scale)' if self.log_y else ''} vs {self.xlabel}")
        plt.xlabel(self.xlabel + (" (log scale)" if self.log_x else ""))
        drawn = 0
        every = []
        for color, points in zip(COLORS, groups.values()):
            kept = [p for p in (self._point(x, y) for x, y in points) if p is not None]
            if kept:
                plt.scatter([x for x, _ in kept], [y for _, y in kept], color=color, marker="dot")
                drawn += len(kept)
                every += kept
        if every:  # round ticks labelled by value, and a sane range around a single point or one L0
            for axis, log, values, limit in (
                ("x", self.log_x, [x for x, _ in every], None),
                ("y", self.log_y, [y for _, y in every], self.y_ceiling),
            ):
                low, high = min(values), max(values)
                ticks, labels = axes.ticks(low, high, log, 4)
                if limit is not None and not log and ticks[-1] > limit >= high:
                    kept_ticks = [(t, label) for t, label in zip(ticks, labels) if t <= limit + 1e-12]
                    ticks, labels = [t for t, _ in kept_ticks], [label for _, label in kept_ticks]
                    if ticks[-1] < limit:
                        ticks, labels = [*ticks, limit], [*labels, axes.tick_label(limit, False)]
                (plt.xlim if axis == "x" else plt.ylim)(ticks[0], ticks[-1])
                (plt.xticks if axis == "x" else plt.yticks)(ticks, labels)
                self.axis_ticks[axis] = (ticks, labels)
        mark = self._point(*selected) if selected is not None else None
        if mark is not None:
            plt.scatter([mark[0]], [mark[1]], color="white", marker="◉")  # drawn last: on top of its group's dot
        self.drawn_points = drawn
        self.refresh()
