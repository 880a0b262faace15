"""Import model: a pretrained timm or torchvision model (by spec, from a weights file or the library's download) as a
model run that every later stage reads like one trained here."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Footer, Header, ProgressBar, Static

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine import events, metrics
from vitsae_tui.engine.config import ConfigError, ImportModelConfig
from vitsae_tui.engine.text import shown
from vitsae_tui.tui.jobs import Job
from vitsae_tui.tui.screens.stage import START_STOP_BINDINGS, StageScreen
from vitsae_tui.tui.widgets.config_form import ConfigForm
from vitsae_tui.tui.widgets.stage_log import StageLog

STAGE = "import-model"
FORM_FIELDS = ("spec", "weights", "name")


class ImportModelScreen(StageScreen):
    STAGE = STAGE
    RUN_KIND = "models"
    BINDINGS = START_STOP_BINDINGS
    AUTO_FOCUS = "#spec"  # the screen is for typing a spec: its field has the keys at once

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with VerticalScroll(id="form"):
                yield ConfigForm(ImportModelConfig, FORM_FIELDS, {}, id="config")
                with Horizontal(id="form-buttons"):
                    yield Button("Start ^s", variant="success", id="start", compact=True)
                    yield Button("Stop ^x", variant="error", id="stop", compact=True)
            with Vertical(id="live"):
                yield Static(
                    "no job: type a spec (timm:vit_small_patch16_224, torchvision:resnet50), optionally a weights "
                    "file, and press ctrl+s",
                    id="status",
                )
                yield ProgressBar(total=1, id="progress", show_eta=False)
                yield Static("", id="summary")
                yield StageLog(id="log")
        yield Footer()

    def fill_form(self, config: dict) -> None:
        self.query_one("#config", ConfigForm).fill(config)

    def form_config(self) -> ImportModelConfig:
        values = self.query_one("#config", ConfigForm).read(config_mod.to_dict(ImportModelConfig()))
        cfg = config_mod.from_dict(ImportModelConfig, values)
        if not cfg.spec:
            raise ConfigError("type the model's spec first, e.g. timm:vit_small_patch16_224 or torchvision:resnet50")
        return cfg

    def on_button_pressed(self, event: Button.Pressed) -> None:
        {"start": self.action_start, "stop": self.action_stop}[event.button.id]()

    def job_title(self, cfg: ImportModelConfig) -> str:
        return f"import {shown(cfg.spec, 60)}"

    def action_start(self) -> None:
        self.start_from_form()

    def reset_view(self) -> None:
        self.query_one("#summary", Static).update("")

    def on_stage_event(self, job: Job, event: events.Event) -> None:
        if isinstance(event, events.Finished) and not event.stopped:
            params = event.summary.get(metrics.PARAMETERS.key)
            size = f" · {params / 1e6:.1f}M parameters" if isinstance(params, int) else ""
            self.query_one("#summary", Static).update(
                Text(
                    f"done: models/{Path(event.run_dir).name}{size}\nc collects its activations (from home)",
                    style="green",
                )
            )
