"""An image drawn as half-block terminal pixels: one column and two rows of pixels per cell."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from rich.color import Color
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from textual.widgets import Static

LOWER_HALF, UPPER_HALF = "▄", "▀"


@lru_cache(maxsize=1 << 16)
def _cell_style(top: int, bottom: int) -> Style:
    """A cell's style from two packed 0xRRGGBB colours (the top pixel as background, the bottom one drawn); -1: none."""

    def rgb(packed: int) -> Color:
        return Color.from_rgb(packed >> 16, (packed >> 8) & 0xFF, packed & 0xFF)

    return Style(color=rgb(bottom), bgcolor=rgb(top)) if bottom >= 0 else Style(color=rgb(top))


class HalfBlocks:
    """A Rich renderable of an RGB image, its segments built once: a redraw (a resize, a layout pass) reuses them.

    rich-pixels made a Style per cell on every render (4.5x slower here); styles are cached by colour pair
    instead, and neighbouring cells of one style are one segment."""

    def __init__(self, image: Image.Image):
        pixels = np.asarray(image.convert("RGB"), dtype=np.int64)
        packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]  # (H, W)
        self.width = image.width
        self.lines: list[list[Segment]] = []
        for y in range(0, image.height, 2):
            top = packed[y].tolist()
            bottom = packed[y + 1].tolist() if y + 1 < image.height else [-1] * image.width
            char = LOWER_HALF if y + 1 < image.height else UPPER_HALF
            line: list[Segment] = []
            run_style, run_length = None, 0
            for t, b in zip(top, bottom):
                style = _cell_style(t, b)
                if style is run_style:
                    run_length += 1
                    continue
                if run_length:
                    line.append(Segment(char * run_length, run_style))
                run_style, run_length = style, 1
            if run_length:
                line.append(Segment(char * run_length, run_style))
            self.lines.append(line)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in self.lines:
            yield from line
            yield Segment.line()

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(self.width, self.width)


class PixelImage(Static):
    shown_cells: tuple[int, int] = (0, 0)
    """(columns, rows) of the image drawn last"""

    def show(self, image: Image.Image) -> None:
        """Draw a composed image at its own size (resize it first, with a good filter)."""
        self.shown_cells = (image.width, (image.height + 1) // 2)
        self.update(HalfBlocks(image))

    def pixel_box(self) -> tuple[int, int]:
        """(width, height) in pixels that the widget shows."""
        return self.size.width, self.size.height * 2
