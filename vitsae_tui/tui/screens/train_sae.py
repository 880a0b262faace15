"""Train SAE: pick an activation set and hyperparameters; live MSE, FVU, L0 and dead-feature plots, evaluations."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Footer, Header, Input, Label, ProgressBar, RichLog, Select, Static

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine import events
from vitsae_tui.engine.config import ConfigError, SAETrainConfig
from vitsae_tui.tui.jobs import Job
from vitsae_tui.tui.screens.stage import RESUMABLE_BINDINGS, StageScreen
from vitsae_tui.tui.widgets.metric_plot import MetricPlot
from vitsae_tui.tui.widgets.choices import refill_select

STAGE = "train-sae"
FIELDS = [("expansion", int), ("l0_coeff", float), ("bandwidth", float), ("lr", float), ("batch_size", int), ("tokens", int)]
LABELS = {"expansion": "expansion factor", "l0_coeff": "L0 coefficient λ", "bandwidth": "bandwidth ε", "lr": "learning rate",
          "batch_size": "batch size (tokens)", "tokens": "training tokens"}
PLOTS = [("mse", "MSE", True), ("fvu", "FVU", True), ("l0", "L0", False), ("dead_fraction", "dead %", False)]
BARS = " ▁▂▃▄▅▆▇█"


def histogram_bars(counts: list[int]) -> str:
    peak = max(counts) if counts and max(counts) > 0 else 1
    return "".join(BARS[min(len(BARS) - 1, round(c / peak * (len(BARS) - 1)))] if c else " " for c in counts)


def format_eval(row: dict) -> str:
    lines = [f"[b]eval @ step {row['step']}[/]  FVU {row.get('eval_fvu', float('nan')):.4f} · L0 {row.get('eval_l0', float('nan')):.1f} · "
             f"never fired {row.get('eval_never_fired_fraction', 0.0):.1%}"]
    density = row.get("density")
    if density:
        lines.append(f"density 1e-7 [{histogram_bars(density['counts'])}] 1   ({density['never_fired']} never fired)")
    if "ce_recovered" in row:
        lines.append(f"spliced in: CE {row['ce_sae']:.3f} (clean {row['ce_clean']:.3f}, mean-ablated {row['ce_ablated']:.3f}) → "
                     f"{row['ce_recovered']:.1%} recovered · acc {row['acc_sae']:.1%} vs {row['acc_clean']:.1%} clean")
    return "\n".join(lines)


class TrainSAEScreen(StageScreen):
    STAGE = STAGE
    RUN_KIND = "saes"
    BINDINGS = RESUMABLE_BINDINGS

    def compose(self) -> ComposeResult:
        defaults = SAETrainConfig()
        yield Header()
        with Horizontal():
            with VerticalScroll(id="form"):
                yield Label("activation set")
                yield Select([], prompt="(collect activations first)", id="activations", compact=True)
                for key, _parse in FIELDS:
                    yield Label(LABELS[key])
                    yield Input(str(getattr(defaults, key)), id=key, compact=True)
                yield Label("device")
                yield Select([(d, d) for d in ("auto", "cpu", "cuda", "mps")], value="auto", allow_blank=False, id="device", compact=True)
                yield Label("resume run")
                yield Select([], prompt="(none)", id="resume_run", compact=True)
                with Horizontal(id="form-buttons"):
                    yield Button("Start (s)", variant="success", id="start", compact=True)
                    yield Button("Stop (x)", variant="error", id="stop", compact=True)
                yield Button("Resume (r)", id="resume", compact=True)
            with Vertical(id="live"):
                yield Static("no job: pick an activation set and press s", id="status")
                yield ProgressBar(total=1, id="progress", show_eta=False)
                with Grid(id="sae-plots"):
                    for key, title, log_y in PLOTS:
                        yield MetricPlot(title, log_y=log_y, id=f"plot_{key}")
                yield Static("", id="eval")
                yield RichLog(id="log", max_lines=500, wrap=True, markup=True)
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
        refill_select(select, [(r.name, r.name) for r in sets])
        resumable = [r for r in ws.runs("saes") if (r.path / "trainer.pt").exists() and r.state != "finished"]
        self.query_one("#resume_run", Select).set_options([(f"{r.name} ({r.state})", r.name) for r in resumable])

    def form_config(self) -> SAETrainConfig:
        select = self.query_one("#activations", Select)
        if select.is_blank():
            raise ConfigError("pick an activation set first (collect one on the Collect screen if the list is empty)")
        values = {"activations": str(select.value), "device": str(self.query_one("#device", Select).value)}
        for key, parse in FIELDS:
            text = self.query_one(f"#{key}", Input).value.strip()
            try:
                values[key] = parse(text)
            except ValueError:
                raise ConfigError(f"{LABELS[key]} must be a {'whole number' if parse is int else 'number'}, not {text!r}") from None
        return config_mod.from_dict(SAETrainConfig, values)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        {"start": self.action_start, "stop": self.action_stop, "resume": self.action_resume}[event.button.id]()

    def reset_view(self) -> None:
        for plot in self.query(MetricPlot):
            plot.clear()
        self.query_one("#eval", Static).update("")

    def action_start(self, resume: str | None = None) -> None:
        try:
            cfg = self.form_config() if resume is None else SAETrainConfig()
        except ConfigError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        from vitsae_tui.engine.train_sae import train_sae

        if self.app.jobs.running(STAGE):
            self.notify("an SAE job is already running; stop it first (x)", severity="warning")
            return
        self.reset_view()
        if resume:
            self.draw_history(resume)
        title = f"resume {resume}" if resume else f"SAE on {cfg.activations}"
        self.start_job(title, train_sae, cfg, self.app.workspace, resume=resume)

    def show_run(self, run_dir: Path) -> None:
        """Draw any run's curves from its files and keep following them while it is written."""
        self.watch_run(run_dir)
        self.redraw_plots()

    def add_metrics(self, row: dict) -> None:
        if row.get("kind") == "step":
            for key, _title, _log in PLOTS:
                value = row[key] * 100 if key == "dead_fraction" else row[key]
                self.query_one(f"#plot_{key}", MetricPlot).add("train", row["step"], value)
        elif row.get("kind") == "eval":
            self.query_one("#eval", Static).update(format_eval(row))
            for key in ("fvu", "l0"):
                if f"eval_{key}" in row:
                    self.query_one(f"#plot_{key}", MetricPlot).add("held-out", row["step"], row[f"eval_{key}"])

    def on_stage_event(self, job: Job, event: events.Event) -> None:
        if isinstance(event, events.Metrics):
            self.add_metrics(event.row)
        elif isinstance(event, events.Finished):
            s = event.summary
            verb = "stopped (checkpoint saved; resume with r)" if event.stopped else "finished"
            self.query_one("#log", RichLog).write(
                f"[bold green]{verb}[/]: FVU {s.get('fvu', float('nan')):.4f}, L0 {s.get('l0', float('nan')):.1f}, "
                f"dead {s.get('dead_fraction', 0.0):.1%} → {event.run_dir}")
            self.refresh_choices()

    def status_detail(self, job: Job) -> str:
        detail = super().status_detail(job)
        row = next((e.row for e in reversed(job.history) if isinstance(e, events.Metrics) and e.row.get("kind") == "step"), None)
        if row is None:
            return detail
        return (f"{detail} · MSE {row['mse']:.4g} · FVU {row['fvu']:.4f} · L0 {row['l0']:.1f} · "
                f"dead {row['dead_fraction']:.1%} · {row['tokens_per_s']:,.0f} tok/s")

    def redraw_plots(self) -> None:
        for plot in self.query(MetricPlot):
            plot.redraw()
