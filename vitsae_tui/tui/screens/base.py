"""What every full screen of the app shares: typing into a form field never fires a shortcut, and ? or F1 open the
screen's keys."""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Checkbox, Input, OptionList, RadioSet, Select, Switch, TextArea

FORM_FIELDS = (Input, Select, OptionList, Checkbox, Switch, RadioSet, TextArea)
"""widgets a person types or picks into: while one has focus, printable keys are theirs (a Select's open list is an
OptionList)"""

HELP_BINDINGS = [Binding("question_mark,f1", "app.help", "Help", show=False)]


def typing_in_form(screen: Screen) -> bool:
    focused = screen.focused
    return focused is not None and any(isinstance(node, FORM_FIELDS) for node in focused.ancestors_with_self)


class AppScreen(Screen):
    """The base of home, the stage screens, the browser and compare."""

    def on_key(self, event: events.Key) -> None:
        # the field had the key first; a printable one it left alone must not reach the bindings (the "s" of a path
        # typed into a dropdown started a training run)
        if event.is_printable and typing_in_form(self):
            event.stop()
            event.prevent_default()
