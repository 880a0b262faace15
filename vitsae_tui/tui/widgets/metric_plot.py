"""A live line plot: keeps every point, draws a copy binned to the widget's width, redraws when asked."""

from __future__ import annotations

import math

from textual_plotext import PlotextPlot

from vitsae_tui.tui.widgets import axes

SERIES_COLORS = ("cyan", "orange", "magenta", "green")
"""each series' colour, in order, named in the plot's title"""


def downsample(xs: list[float], ys: list[float], width: int) -> tuple[list[float], list[float]]:
    """Average consecutive points into at most `width` bins, so a long run draws as fast as a short one."""
    n = len(xs)
    if n <= width or width <= 0:
        return list(xs), list(ys)
    bin_size = math.ceil(n / width)
    out_x, out_y = [], []
    for start in range(0, n, bin_size):
        chunk_y = [y for y in ys[start : start + bin_size] if math.isfinite(y)]
        if chunk_y:
            out_x.append(xs[min(start + bin_size, n) - 1])
            out_y.append(sum(chunk_y) / len(chunk_y))
    return out_x, out_y


class MetricPlot(PlotextPlot):
    """Named series of (x, y) points; `add` is cheap, `redraw` rebuilds the plot once for all new points."""

    def __init__(
        self,
        title: str,
        xlabel: str = "step",
        log_y: bool = False,
        y_min: float | None = None,
        y_max: float | None = None,
        **kwargs,
    ):
        """y_min / y_max pin the y axis (e.g. 0 for a count or a percentage, whose axis must not dip below it)."""
        super().__init__(**kwargs)
        self.title = title
        self.xlabel = xlabel
        self.log_y = log_y
        self.y_min, self.y_max = y_min, y_max
        self.series: dict[str, tuple[list[float], list[float]]] = {}
        self.dirty = True
        self.y_ticks: list[str] = []
        """the y axis' tick labels at the last redraw, for tests"""
        self.drawn_points = 0
        """points actually drawn at the last redraw (after downsampling), for tests and diagnostics"""

    def add(self, name: str, x: float, y: float | None) -> None:
        """Append a point; a missing or non-finite value (null in the metrics file, NaN once read) is skipped."""
        if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            return
        if not (math.isfinite(x) and math.isfinite(y)):
            return
        xs, ys = self.series.setdefault(name, ([], []))
        xs.append(float(x))
        ys.append(float(y))
        self.dirty = True

    def clear(self) -> None:
        self.series.clear()
        self.dirty = True

    def point_count(self, name: str) -> int:
        return len(self.series.get(name, ([], []))[0])

    def redraw(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.xlabel(self.xlabel)
        width = max(self.size.width - 10, 10)
        lines = []
        for name, (xs, ys) in self.series.items():
            dx, dy = downsample(xs, ys, width)
            if self.log_y:
                # log10 drawn on a linear axis: plotext's own log scale re-applies itself on every rebuild
                kept = [(x, math.log10(y)) for x, y in zip(dx, dy) if y > 0]
                dx, dy = [x for x, _ in kept], [y for _, y in kept]
            if dx:
                lines.append((name, dx, dy))
        # the key is in the title: plotext's legend sits inside the frame, over the first points of a falling curve
        key = [f"{SERIES_COLORS[i % len(SERIES_COLORS)]} {name}" for i, (name, _, _) in enumerate(lines)]
        scale = " · log scale" if self.log_y else ""
        plt.title(self.title + scale + (f" ({', '.join(key)})" if len(key) > 1 else ""))
        for i, (_name, dx, dy) in enumerate(lines):
            plt.plot(dx, dy, marker="braille", color=SERIES_COLORS[i % len(SERIES_COLORS)])
        if lines:
            values = [y for _, _, dy in lines for y in dy]
            low, high = min(values), max(values)
            if self.y_min is not None:  # a pinned floor, unless a value lies below it (it would be drawn off the frame)
                low = min(low, math.log10(self.y_min) if self.log_y and self.y_min > 0 else self.y_min)
            if self.y_max is not None:
                high = max(high, self.y_max)
            ticks, labels = axes.ticks(low, high, self.log_y, max(2, (self.size.height - 4) // 3))
            # a flat series widens both ways: no tick below a floor that no value crosses
            if self.y_min is not None and not self.log_y and min(values) >= self.y_min:
                kept = [(t, label) for t, label in zip(ticks, labels) if t >= self.y_min - 1e-12]
                ticks, labels = [t for t, _ in kept], [label for _, label in kept]
            plt.ylim(ticks[0], ticks[-1])
            plt.yticks(ticks, labels)
            self.y_ticks = labels
            steps = [x for _, dx, _ in lines for x in dx]
            x_ticks, x_labels = axes.ticks(min(steps), max(steps), False, max(2, self.size.width // 14))
            plt.xlim(x_ticks[0], x_ticks[-1])
            plt.xticks(x_ticks, x_labels)
        self.drawn_points = sum(len(dx) for _, dx, _ in lines)
        self.refresh()
