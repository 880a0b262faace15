"""A stage's log: wraps at the widget's own width (RichLog's default renders at 78 columns and crops the rest)."""

from __future__ import annotations

from textual.widgets import RichLog


class StageLog(RichLog):
    def __init__(self, **kwargs):
        super().__init__(max_lines=500, min_width=16, wrap=True, markup=False, **kwargs)
