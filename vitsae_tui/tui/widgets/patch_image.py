"""The browser's image: focusable, so the arrow keys move its patch cursor while it has focus; it asks to be drawn
again whenever its size changes (a terminal resize, a panel opening under it)."""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message

from vitsae_tui.tui.widgets.pixel_image import PixelImage


class PatchImage(PixelImage, can_focus=True):
    BINDINGS = [
        Binding("left", "screen.move(0,-1)", "←", show=False),
        Binding("right", "screen.move(0,1)", "→", show=False),
        Binding("up", "screen.move(-1,0)", "↑", show=False),
        Binding("down", "screen.move(1,0)", "↓", show=False),
        Binding("enter", "screen.open_highlighted", "Open feature", show=False),
    ]

    class Resized(Message):
        """The widget has a new size: the image drawn for the old one would be cut or leave the pane half empty."""

    def on_resize(self) -> None:
        self.post_message(self.Resized())
