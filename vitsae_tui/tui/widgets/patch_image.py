"""The browser's image: focusable, so the arrow keys move its patch cursor while it has focus."""

from __future__ import annotations

from textual.binding import Binding

from vitsae_tui.tui.widgets.pixel_image import PixelImage


class PatchImage(PixelImage, can_focus=True):
    BINDINGS = [
        Binding("left", "screen.move(0,-1)", "←", show=False),
        Binding("right", "screen.move(0,1)", "→", show=False),
        Binding("up", "screen.move(-1,0)", "↑", show=False),
        Binding("down", "screen.move(1,0)", "↓", show=False),
        Binding("enter", "screen.open_highlighted", "Open feature", show=False),
    ]
