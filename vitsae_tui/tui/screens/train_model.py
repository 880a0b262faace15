"""Train model: a config form, start/stop/resume, progress with ETA, live loss and accuracy plots, a log."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Footer, Header, Label, ProgressBar, Select, Static

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine import events, metrics, model_run
from vitsae_tui.engine.config import ConfigError, TrainModelConfig
from vitsae_tui.formatting import stopped_verb
from vitsae_tui.tui.jobs import Job
from vitsae_tui.tui.screens.stage import DEVICES, PLOT_BINDINGS, RESUMABLE_BINDINGS, StageScreen
from vitsae_tui.tui.widgets.choices import refill_select
from vitsae_tui.tui.widgets.config_form import ConfigForm
from vitsae_tui.tui.widgets.metric_plot import MetricPlot
from vitsae_tui.tui.widgets.stage_log import StageLog

STAGE = "train-model"
FORM_FIELDS = ("preset", "data.dataset", "data.n_train", "epochs", "batch_size", "lr", "seed", "device")


class TrainModelScreen(StageScreen):
    STAGE = STAGE
    RUN_KIND = "models"
    BINDINGS = [*RESUMABLE_BINDINGS, *PLOT_BINDINGS]
    PLOTS = ("loss_plot", "acc_plot")

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with VerticalScroll(id="form"):
                yield ConfigForm(
                    TrainModelConfig,
                    FORM_FIELDS,
                    {"preset": tuple((name, name) for name in config_mod.PRESETS), "device": DEVICES},
                    id="config",
                )
                yield Label("resume run")
                yield Select([], prompt="(none)", id="resume_run", compact=True)
                with Horizontal(id="form-buttons"):
                    yield Button("Start ^s", variant="success", id="start", compact=True)
                    yield Button("Stop ^x", variant="error", id="stop", compact=True)
                yield Button("Resume ^r", id="resume", compact=True)
            with Vertical(id="live"):
                yield Static("no job: set the form and press ctrl+s", id="status")
                yield ProgressBar(
                    total=1, id="progress", show_eta=False
                )  # determinate: no animation until a job reports
                with Horizontal(id="plots"):
                    yield MetricPlot("loss", id="loss_plot", y_min=0.0)
                    yield MetricPlot("accuracy", id="acc_plot", y_min=0.0, y_max=1.0)
                yield StageLog(id="log")
        yield Footer()

    def on_mount(self) -> None:
        if self.shown_job is None:  # a job's replayed history (StageScreen.on_mount ran first) filled in its settings
            self.fill_form(config_mod.to_dict(config_mod.preset("demo")))
        self.set_interval(0.3, self.redraw_plots)
        self.redraw_plots()
        self.refresh_runs()

    def on_screen_resume(self) -> None:
        self.refresh_runs()

    def fill_form(self, config: dict) -> None:
        with self.prevent(Select.Changed):  # a preset change would refill the form with the preset's values
            self.query_one("#config", ConfigForm).fill(config)

    def refresh_runs(self) -> None:
        runs = self.app.workspace.runs("models")
        options = [
            (f"{r.name} ({r.state})", r.name)
            for r in runs
            if model_run.checkpoint_path(r.path, "last").exists() and r.state != "finished"
        ]
        refill_select(self.query_one("#resume_run", Select), options)  # the newest stopped run, unless one was picked

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "preset" and isinstance(event.value, str) and not self.form_locked:
            self.fill_form(config_mod.to_dict(config_mod.preset(str(event.value))))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        {"start": self.action_start, "stop": self.action_stop, "resume": self.action_resume}[event.button.id]()

    def form_config(self) -> TrainModelConfig:
        """The form's values over the chosen preset; raises ConfigError with a message naming the bad field."""
        base = config_mod.to_dict(config_mod.preset(str(self.query_one("#preset", Select).value)))
        return config_mod.from_dict(TrainModelConfig, self.query_one("#config", ConfigForm).read(base))

    def reset_view(self) -> None:
        self.query_one("#loss_plot", MetricPlot).clear()
        self.query_one("#acc_plot", MetricPlot).clear()

    def action_start(self, resume: str | None = None) -> None:
        if self.app.jobs.running(STAGE):
            self.notify("a training job is already running; stop it first (ctrl+x)", severity="warning")
            return
        try:
            cfg = self.form_config()
        except ConfigError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        from vitsae_tui.engine.stages.train_model import run as train_model

        self.start_job(
            f"resume {resume}" if resume else f"train {cfg.preset}", train_model, cfg, self.app.workspace, resume=resume
        )

    def show_run(self, run_dir: Path) -> None:
        """Draw any run's curves from its files and keep following them while it is written."""
        self.watch_run(run_dir)
        self.redraw_plots()

    def add_metrics(self, row: metrics.Row) -> None:
        loss_plot = self.query_one("#loss_plot", MetricPlot)
        acc_plot = self.query_one("#acc_plot", MetricPlot)
        if isinstance(row, metrics.ModelStep):
            loss_plot.add("train", row.step, row.train_loss)
            acc_plot.add("train", row.step, row.train_accuracy)
        elif isinstance(row, metrics.ModelEpoch):
            loss_plot.add("val", row.step, row.val_loss)
            acc_plot.add("val", row.step, row.val_accuracy)

    def on_stage_event(self, job: Job, event: events.Event) -> None:
        if isinstance(event, events.Finished):
            verb = stopped_verb(event.summary, "r") if event.stopped else "finished"
            acc = event.summary.get(metrics.BEST_VAL_ACCURACY.key)
            trained = event.summary.get(metrics.STEP.key)
            result = f": best val accuracy {acc:.1%}" if isinstance(acc, float) and trained else ""
            self.query_one("#log", StageLog).write(Text(f"{verb}{result} → {event.run_dir}", style="green"))
            self.refresh_runs()

    def redraw_plots(self) -> None:
        for plot in self.query(MetricPlot):
            plot.redraw()
