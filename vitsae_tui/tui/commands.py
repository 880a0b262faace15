"""The command palette, guarded against a Textual fault: paging its result list before that list has laid out its
lines (a fast typist's pgdn right after a keystroke, or no result at all) raised KeyError and ended the app."""

from __future__ import annotations

from textual.command import CommandPalette


class SafeCommandPalette(CommandPalette):
    def _action_command_list(self, action: str) -> None:
        if not action.startswith("page_"):
            super()._action_command_list(action)
            return
        try:
            super()._action_command_list(action)
        except KeyError:
            pass  # no laid-out line to page from yet: the key does nothing, as it would on an empty list
