"""A feature's top examples as a page of thumbnails with heatmaps; arrows pick one, enter opens it."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image, ImageDraw
from textual.binding import Binding
from textual.message import Message

from vitsae_tui.tui.widgets.pixel_image import PixelImage

Example = tuple[int, int, float]
"""(image, token, activation)"""
MIN_TILE, MAX_TILE = 20, 96
SELECTED = (80, 220, 255)


def tile_layout(width: int, height: int, count: int) -> tuple[int, int, int]:
    """(tile, columns, rows): the largest square tile that still shows four examples (or as many as there are),
    else two, else one; tiles are separated by one pixel."""
    for wanted in (min(4, count), min(2, count), 1):
        for tile in range(min(MAX_TILE, width - 1, height - 1), MIN_TILE - 1, -1):
            columns, rows = width // (tile + 1), height // (tile + 1)
            if columns * rows >= max(wanted, 1):
                return tile, columns, rows
    return max(8, min(width, height) - 1), 1, 1


class ExamplesView(PixelImage, can_focus=True):
    BINDINGS = [
        Binding("left", "step(-1)", "Previous", show=False),
        Binding("right", "step(1)", "Next", show=False),
        Binding("up", "step_row(-1)", "Up", show=False),
        Binding("down", "step_row(1)", "Down", show=False),
        Binding("enter", "open", "Open image"),
    ]

    class Highlighted(Message):
        def __init__(self, rank: int, example: Example | None):
            super().__init__()
            self.rank, self.example = rank, example

    class Opened(Message):
        def __init__(self, example: Example):
            super().__init__()
            self.example = example

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.examples: list[Example] = []
        self.draw_tile: Callable[[Example, int], Image.Image] | None = None
        self.selected = 0
        self.tiles: dict[tuple[Example, int], Image.Image] = {}
        """composed thumbnails: moving the selection redraws the frame, not every heatmap"""
        self.tile = 0
        """the side of one thumbnail in pixels, as last drawn"""
        self.columns = 1
        self.per_page = 1

    def set_examples(self, examples: list[Example], draw_tile: Callable[[Example, int], Image.Image]) -> None:
        self.examples, self.draw_tile, self.selected = examples, draw_tile, 0
        self.tiles.clear()
        self.redraw()

    def clear_examples(self) -> None:
        self.examples, self.draw_tile, self.selected = [], None, 0
        self.tiles.clear()
        self.update("")
        self.post_message(self.Highlighted(0, None))

    def on_resize(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        if not self.examples or self.draw_tile is None or self.size.width < 4:
            return
        width, height = self.pixel_box()
        tile, self.columns, rows = tile_layout(width, height, len(self.examples))
        self.tile = tile
        self.per_page = self.columns * rows
        first = self.selected - self.selected % self.per_page
        shown = self.examples[first : first + self.per_page]
        canvas = Image.new("RGB", (self.columns * (tile + 1) + 1, rows * (tile + 1) + 1), (0, 0, 0))
        draw = ImageDraw.Draw(canvas)
        for k, example in enumerate(shown):
            r, c = divmod(k, self.columns)
            x, y = c * (tile + 1) + 1, r * (tile + 1) + 1
            if (example, tile) not in self.tiles:
                self.tiles[(example, tile)] = self.draw_tile(example, tile)
            canvas.paste(self.tiles[(example, tile)], (x, y))
            if first + k == self.selected and self.has_focus:
                draw.rectangle([x - 1, y - 1, x + tile, y + tile], outline=SELECTED)
        self.show(canvas)
        self.post_message(self.Highlighted(self.selected, self.examples[self.selected]))

    def on_focus(self) -> None:
        self.redraw()

    def on_blur(self) -> None:
        self.redraw()

    def select(self, index: int) -> None:
        if self.examples:
            self.selected = index % len(self.examples)
            self.redraw()

    def action_step(self, step: int) -> None:
        self.select(self.selected + step)

    def action_step_row(self, step: int) -> None:
        self.select(self.selected + step * self.columns)

    def page(self, step: int) -> None:
        """The next or previous page of examples (wrapping around)."""
        if self.examples:
            pages = -(-len(self.examples) // self.per_page)
            page = (self.selected // self.per_page + step) % pages
            self.select(page * self.per_page)

    def action_open(self) -> None:
        if self.examples:
            self.post_message(self.Opened(self.examples[self.selected]))
