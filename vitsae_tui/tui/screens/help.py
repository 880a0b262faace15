"""The keys of the screen underneath, generated from its bindings (and the app's); esc, ? or F1 close it."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

KEY_NAMES = {
    "question_mark": "?",
    "plus": "+",
    "minus": "-",
    "slash": "/",
    "left_square_bracket": "[",
    "right_square_bracket": "]",
    "escape": "esc",
}


def key_label(key: str) -> str:
    return "+".join(KEY_NAMES.get(part, part) for part in key.split("+"))


def describe_action(action: str) -> str:
    """A binding without a description still says what it does: its action's words."""
    return action.split(".")[-1].split("(")[0].replace("_", " ")


def screen_keys(screen: Screen) -> list[tuple[str, str]]:
    """(keys, what they do) for every binding that acts on `screen` now, keys of one action joined ('n ]')."""
    by_action: dict[tuple[str, str], list[str]] = {}
    for key, active in screen.active_bindings.items():
        binding = active.binding
        if binding.system or not active.enabled:
            continue
        what = binding.description or binding.tooltip or describe_action(binding.action)
        by_action.setdefault((binding.action, what), []).append(key_label(key))
    return [(" ".join(keys), what) for (_action, what), keys in by_action.items()]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,f1,q", "close", "Close")]

    def __init__(self, title: str, keys: list[tuple[str, str]]):
        super().__init__()
        self.title_text, self.keys = title, keys

    def compose(self) -> ComposeResult:
        width = max((len(keys) for keys, _ in self.keys), default=4)
        text = Text(f"{self.title_text}: keys\n\n", style="bold")
        for keys, what in self.keys:
            text.append(f"{keys:>{width}}", style="bold cyan")
            text.append(f"  {what}\n")
        text.append("\nesc, ? or F1 closes this; ctrl+p lists every action by name", style="dim")
        with VerticalScroll(id="help-dialog"):
            yield Static(text, id="help-text")

    def action_close(self) -> None:
        self.dismiss(None)
