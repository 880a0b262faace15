"""An image drawn as half-block terminal pixels: one column and two rows of pixels per cell."""

from __future__ import annotations

from PIL import Image
from textual.widgets import Static


class PixelImage(Static):
    shown_cells: tuple[int, int] = (0, 0)
    """(columns, rows) of the image drawn last"""

    def show(self, image: Image.Image) -> None:
        """Draw a composed image at its own size (resize it first, with a good filter: rich-pixels uses NEAREST)."""
        from rich_pixels import HalfcellRenderer, Pixels

        self.shown_cells = (image.width, (image.height + 1) // 2)
        self.update(Pixels.from_image(image, renderer=HalfcellRenderer()))

    def pixel_box(self) -> tuple[int, int]:
        """(width, height) in pixels that the widget shows."""
        return self.size.width, self.size.height * 2
