"""Train SAE: pick an activation set and hyperparameters; live MSE, FVU, L0 and dead-feature plots, evaluations."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Footer, Header, Label, ProgressBar, Select, Static

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine import events, metrics
from vitsae_tui.engine.config import SWEPT_FIELDS, ConfigError, SAETrainConfig, sweep_configs
from vitsae_tui.engine.saes import run as sae_run
from vitsae_tui.formatting import fidelity_line, format_metrics, stopped_verb, table_title
from vitsae_tui.tui.jobs import Job
from vitsae_tui.tui.screens.stage import DEVICES, PLOT_BINDINGS, RESUMABLE_BINDINGS, StageScreen
from vitsae_tui.tui.widgets.choices import refill_select
from vitsae_tui.tui.widgets.config_form import ConfigForm
from vitsae_tui.tui.widgets.metric_plot import MetricPlot
from vitsae_tui.tui.widgets.stage_log import StageLog

STAGE = "train-sae"
FORM_FIELDS = ("activations", "arch", "l0_coeff", "k", "expansion", "bandwidth", "lr", "batch_size", "tokens", "device")
PLOTS = (metrics.MSE, metrics.FVU, metrics.L0, metrics.DEAD_FRACTION)
"""the training window's metrics plotted (a linear axis starts at 0; a percentage is plotted in percent)"""
HELD_OUT = {metrics.FVU: metrics.EVAL_FVU, metrics.L0: metrics.EVAL_L0}
"""the plots that also show the held-out evaluation's value"""
BARS = " ▁▂▃▄▅▆▇█"


def histogram_bars(counts: list[int]) -> str:
    peak = max(counts) if counts and max(counts) > 0 else 1
    return "".join(BARS[min(len(BARS) - 1, round(c / peak * (len(BARS) - 1)))] if c else " " for c in counts)


def format_eval(row: metrics.SAEEval) -> Text:
    text = Text.assemble(
        (f"eval @ step {row.step}", "bold"),
        f"  FVU {row.eval_fvu:.4f} · L0 {row.eval_l0:.1f} · never fired {row.eval_never_fired_fraction:.1%}",
    )
    if row.density is not None:
        never = row.density.never_fired if row.density.never_fired is not None else "?"
        text.append(f"\ndensity 1e-7 [{histogram_bars(list(row.density.counts))}] 1   ({never} never fired)")
    if row.theta is not None:
        median = row.theta.median if row.theta.median is not None else float("nan")
        text.append(f"\nθ 1e-6 [{histogram_bars(list(row.theta.counts))}] 10   (median {median:.2g})")
    if row.spliced:
        text.append(f"\n{fidelity_line(row)}")
    return text


class TrainSAEScreen(StageScreen):
    STAGE = STAGE
    RUN_KIND = "saes"
    BINDINGS = [*RESUMABLE_BINDINGS, *PLOT_BINDINGS]
    PLOTS = tuple(f"plot_{metric.key}" for metric in PLOTS)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with VerticalScroll(id="form"):
                yield ConfigForm(
                    SAETrainConfig, FORM_FIELDS, {"activations": (), "device": DEVICES}, id="config", lists=SWEPT_FIELDS
                )
                yield Label("resume run")
                yield Select([], prompt="(none)", id="resume_run", compact=True)
                with Horizontal(id="form-buttons"):
                    yield Button("Start ^s", variant="success", id="start", compact=True)
                    yield Button("Stop ^x", variant="error", id="stop", compact=True)
                yield Button("Resume ^r", id="resume", compact=True)
            with Vertical(id="live"):
                yield Static("no job: pick an activation set and press ctrl+s", id="status")
                yield ProgressBar(total=1, id="progress", show_eta=False)
                with Grid(id="sae-plots"):
                    for metric in PLOTS:
                        floor = None if metric.log_axis else 0.0
                        title, log_y = table_title(metric), metric.log_axis
                        yield MetricPlot(title, log_y=log_y, y_min=floor, id=f"plot_{metric.key}")
                yield Static("", id="eval")
                yield StageLog(id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_choices()
        self.set_interval(0.3, self.redraw_plots)
        self.redraw_plots()

    def on_screen_resume(self) -> None:
        self.refresh_choices()

    def refresh_choices(self) -> None:
        ws = self.app.workspace
        sets = [r for r in ws.runs("activations") if r.state == "finished"]
        select = self.query_one("#activations", Select)
        refill_select(select, [(r.name, r.name) for r in sets], self.app.lineage_run("activations"))
        resumable = [r for r in ws.runs("saes") if sae_run.has_checkpoint(r.path) and r.state != "finished"]
        refill_select(self.query_one("#resume_run", Select), [(f"{r.name} ({r.state})", r.name) for r in resumable])

    def form_configs(self) -> list[SAETrainConfig]:
        """The form's SAE, or the SAEs of its sweep when a list field holds several values."""
        if self.query_one("#activations", Select).is_blank():
            raise ConfigError("pick an activation set first (collect one on the Collect screen if the list is empty)")
        form = self.query_one("#config", ConfigForm)
        base = config_mod.from_dict(SAETrainConfig, form.read(config_mod.to_dict(SAETrainConfig())))
        return sweep_configs(base, **form.read_lists())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        {"start": self.action_start, "stop": self.action_stop, "resume": self.action_resume}[event.button.id]()

    def reset_view(self) -> None:
        for plot in self.query(MetricPlot):
            plot.clear()
        self.query_one("#eval", Static).update("")

    def fill_form(self, config: dict) -> None:
        self.query_one("#config", ConfigForm).fill(config)

    def action_start(self, resume: str | None = None) -> None:
        if self.app.jobs.running(STAGE):
            self.notify("an SAE job is already running; stop it first (ctrl+x)", severity="warning")
            return
        try:
            cfgs = self.form_configs() if resume is None else [SAETrainConfig()]
        except ConfigError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        from vitsae_tui.engine.stages.train_sae import run as train_sae
        from vitsae_tui.engine.stages.train_sae import run_sweep

        if len(cfgs) > 1:
            self.start_job(f"sweep of {len(cfgs)} SAEs on {cfgs[0].activations}", run_sweep, cfgs, self.app.workspace)
            self.notify(f"{len(cfgs)} SAEs train in one pass: v on home (or the palette's Compare SAEs) plots them")
            return
        title = f"resume {resume}" if resume else f"SAE on {cfgs[0].activations}"
        self.start_job(title, train_sae, cfgs[0], self.app.workspace, resume=resume)

    def show_run(self, run_dir: Path) -> None:
        """Draw any run's curves from its files and keep following them while it is written."""
        self.watch_run(run_dir)
        self.redraw_plots()

    def add_metrics(self, row: metrics.Row) -> None:
        run = getattr(row, "run", "")
        if run and self.shown_run and run != Path(self.shown_run).name:
            return  # another SAE of the sweep: the Compare screen shows them all
        if isinstance(row, metrics.SAEStep):
            for metric in PLOTS:
                value = getattr(row, metric.key)
                self.query_one(f"#plot_{metric.key}", MetricPlot).add(
                    "train", row.step, 100 * value if metric.style == "percent" else value
                )
        elif isinstance(row, metrics.SAEEval):
            self.query_one("#eval", Static).update(format_eval(row))
            for metric, held_out in HELD_OUT.items():
                self.query_one(f"#plot_{metric.key}", MetricPlot).add("held-out", row.step, getattr(row, held_out.key))

    def on_stage_event(self, job: Job, event: events.Event) -> None:
        if isinstance(event, events.Finished):
            verb = stopped_verb(event.summary, "r") if event.stopped else "finished"
            result = format_metrics(event.summary, metrics.SAE_SUMMARY, separator=", ")
            self.query_one("#log", StageLog).write(Text(f"{verb}: {result} → {event.run_dir}", style="green"))
            self.refresh_choices()

    def status_detail(self, job: Job) -> str:
        detail = super().status_detail(job)
        row = job.last_row(STAGE, "step")  # this stage's rows only: a pipeline job also holds the model's rows
        if row is None:
            return detail
        return f"{detail} · {format_metrics(metrics.values(row), separator=' · ')}"

    def redraw_plots(self) -> None:
        for plot in self.query(MetricPlot):
            plot.redraw()
