"""A stage's form, built from its config class: each field labelled with its CLI flag name and explained by its
field doc (shown for the focused field), parsed by its annotated type."""

from __future__ import annotations

import copy

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Label, Select, Static

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.config import ConfigError
from vitsae_tui.tui.widgets.choices import choose

TYPE_NAMES = {int: "a whole number", float: "a number", str: "text", bool: "yes or no"}


def _field(cls, path: str) -> tuple[type, str]:
    """The annotated type and the doc of a dotted field path ("data.dataset") of a config class."""
    *parents, name = path.split(".")
    for parent in parents:
        cls = config_mod.type_hints(cls)[parent]
    return config_mod.type_hints(cls)[name], config_mod.field_help(cls).get(name, "")


def label_of(path: str) -> str:
    """The field's CLI flag name, so the form and `vitsae-tui <stage> --help` use one vocabulary."""
    return path.rsplit(".", 1)[-1].replace("_", "-")


class ConfigForm(Vertical):
    """Inputs for chosen fields of a config class; `choices` turns a field into a Select (options filled later when
    empty, e.g. the runs of a kind). `read(base)` returns base (a config dict) with the form's values in it."""

    DEFAULT_CSS = """
    ConfigForm { height: auto; }
    ConfigForm #field-help { color: $text-muted; height: auto; margin-top: 1; }
    """

    def __init__(
        self,
        cls,
        fields: tuple[str, ...],
        choices: dict[str, tuple] | None = None,
        id: str | None = None,
        lists: tuple[str, ...] = (),
    ):
        """Fields in `lists` take comma-separated values (a sweep): `read` keeps the first, `read_lists` all."""
        super().__init__(id=id)
        self.cls, self.fields, self.choices, self.lists = cls, fields, choices or {}, lists
        self.docs = {path: _field(cls, path)[1] for path in fields}

    def compose(self) -> ComposeResult:
        defaults = config_mod.to_dict(self.cls())
        for path in self.fields:
            kind, doc = _field(self.cls, path)
            yield Label(label_of(path) + (" (a,b: sweep)" if path in self.lists else ""))
            default = self._get(defaults, path)
            options = self.choices.get(path)
            if kind is bool:
                options = (("yes", True), ("no", False))
            name = path.rsplit(".", 1)[-1]
            if options is not None:
                values = [value for _, value in options]
                yield Select(
                    list(options),
                    value=default if default in values else Select.NULL,
                    allow_blank=not values or default not in values,
                    id=name,
                    compact=True,
                    tooltip=doc,
                )
            else:
                yield Input(str(default), id=name, compact=True, tooltip=doc)
        yield Static("", id="field-help")

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        path = next((p for p in self.fields if p.rsplit(".", 1)[-1] == event.widget.id), None)
        if path is not None:
            self.query_one("#field-help", Static).update(Text(f"{label_of(path)}: {self.docs[path]}"))

    @staticmethod
    def _get(values: dict, path: str):
        for part in path.split("."):
            values = values.get(part, "") if isinstance(values, dict) else ""
        return values

    def widget(self, path: str) -> Input | Select:
        return self.query_one(f"#{path.rsplit('.', 1)[-1]}")

    def fill(self, values: dict) -> None:
        """Show a config (as a dict) in the form; fields it lacks keep what they show."""
        for path in self.fields:
            value = self._get(values, path)
            widget = self.widget(path)
            if isinstance(widget, Select):
                choose(widget, value)
            elif value != "":
                widget.value = str(value)

    @staticmethod
    def _parse(path: str, kind: type, text: str):
        text = text.strip()
        try:
            return kind(text) if kind in (int, float) else text
        except ValueError:
            raise ConfigError(f"{label_of(path)} must be {TYPE_NAMES[kind]}, not {text!r}") from None

    def read_lists(self) -> dict[str, tuple]:
        """Every value of each list field (one value: a one-tuple); ConfigError when one repeats or cannot be parsed."""
        values = {}
        for path in self.lists:
            kind, _doc = _field(self.cls, path)
            parts = tuple(self._parse(path, kind, part) for part in self.widget(path).value.split(","))
            if len(set(parts)) != len(parts):
                raise ConfigError(f"{label_of(path)} repeats a value; give each value once")
            values[path] = parts
        return values

    def read(self, base: dict) -> dict:
        """base with the form's values; ConfigError naming the field when one cannot be parsed."""
        values = copy.deepcopy(base)
        for path in self.fields:
            kind, _doc = _field(self.cls, path)
            widget = self.widget(path)
            if isinstance(widget, Select):
                value = "" if widget.is_blank() else widget.value
            else:
                value = self._parse(path, kind, widget.value.split(",")[0] if path in self.lists else widget.value)
            *parents, name = path.split(".")
            target = values
            for parent in parents:
                target = target[parent]
            target[name] = value
        return values
