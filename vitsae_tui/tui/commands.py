"""Command palette: each screen's own commands (its PALETTE, through ScreenCommands), and the palette itself,
guarded against a Textual fault: paging its result list before that list has laid out its lines (a fast typist's
pgdn right after a keystroke, or no result at all) raised KeyError and ended the app."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from textual.command import CommandPalette, DiscoveryHit, Hit, Hits, Provider


class SafeCommandPalette(CommandPalette):
    def _action_command_list(self, action: str) -> None:
        if not action.startswith("page_"):
            super()._action_command_list(action)
            return
        try:
            super()._action_command_list(action)
        except KeyError:
            pass  # no laid-out line to page from yet: the key does nothing, as it would on an empty list


class ScreenCommands(Provider):
    """The active screen's commands: a screen sets `COMMANDS = {ScreenCommands}` and lists them from `palette()`
    as (title, help, action); the action runs on the screen, as its key binding would."""

    def commands(self) -> Iterator[tuple[str, str, Callable[[], object]]]:
        screen = self.screen
        palette = getattr(screen, "palette", None)
        for title, help_text, action in palette() if palette is not None else ():
            yield title, help_text, lambda action=action: self.app.call_later(screen.run_action, action)

    async def discover(self) -> Hits:
        for title, help_text, callback in self.commands():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self.commands():
            if (score := matcher.match(title)) > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
