"""What every stage screen shares: following its job's events, a status line, a progress bar with ETA, a log."""

from __future__ import annotations

import json
from pathlib import Path

from rich.text import Text
from textual.binding import Binding
from textual.widgets import Input, ProgressBar, RichLog, Select, Static

from vitsae_tui.engine import events, metrics
from vitsae_tui.engine.config import ConfigError
from vitsae_tui.engine.stages import REGISTRY
from vitsae_tui.engine.text import MAX_MESSAGE, shown
from vitsae_tui.engine.workspace import read_record, read_status
from vitsae_tui.formatting import format_duration
from vitsae_tui.tui.commands import ScreenCommands
from vitsae_tui.tui.jobs import Job
from vitsae_tui.tui.screens.base import AppScreen

# the control keys work while a form field has focus (printable keys are the field's then); the footer shows them
START_STOP_BINDINGS = [
    Binding("ctrl+s", "start", "Start", priority=True),
    Binding("ctrl+x", "stop", "Stop", priority=True),
    Binding("s", "start", "Start", show=False),
    Binding("x", "stop", "Stop", show=False),
    Binding("escape", "app.switch_mode('home')", "Home"),
]
RESUMABLE_BINDINGS = [
    *START_STOP_BINDINGS[:2],
    Binding("ctrl+r", "resume", "Resume", priority=True),
    *START_STOP_BINDINGS[2:4],
    Binding("r", "resume", "Resume", show=False),
    START_STOP_BINDINGS[4],
]
PLOT_BINDINGS = [Binding("v", "cycle_plot", "Plot")]
DEVICES = tuple((d, d) for d in ("auto", "cpu", "cuda", "mps"))
COMPACT_HEIGHT = 36
"""below this many rows a stage screen shows one plot at a time (v cycles them)"""


class StageScreen(AppScreen):
    """Subclasses set STAGE, compose `#form`, `#status`, `#progress` and `#log`, and override the hooks below.

    The screen shows one run at a time: the newest job that runs its stage (alone or inside the guided run), or a
    run opened from home (watched read-only from its files). A new run clears the plots, the log and the header.
    Textual calls `on_mount` of every class in the MRO (subclass first), so subclasses must not call super().
    """

    COMMANDS = {ScreenCommands}
    STAGE = ""
    RUN_KIND = ""
    """the workspace folder of this stage's runs, for screens that resume them ("models", "saes")"""
    PLOTS: tuple[str, ...] = ()
    """ids of the screen's MetricPlots, in the order `v` cycles them"""
    watching: Path | None = None
    """a run folder followed live from its files (finished, failed, or written by another process)"""
    watch_offset = 0
    shown_job: Job | None = None
    shown_run: str = ""
    history_pending: Path | None = None
    """a resumed run whose curves up to its checkpoint are drawn when its first live row arrives"""
    form_locked = False
    plot_choice = -1
    """the one plot shown (an index into PLOTS), or -1 for all of them"""

    def palette(self) -> list[tuple[str, str, str]]:
        """This screen's palette entries, named after its stage: start, stop, resume, next plot."""
        stage = REGISTRY[self.STAGE]
        commands = [
            (f"{stage.title}: start", "Start a run with the form's settings", "start"),
            (f"{stage.title}: stop", "Stop the running job after saving a checkpoint", "stop"),
        ]
        if stage.resumable:
            commands.append((f"{stage.title}: resume", "Continue the run chosen under 'resume run'", "resume"))
        if len(self.PLOTS) > 1:
            commands.append((f"{stage.title}: next plot", "Show the next plot (on a short terminal)", "cycle_plot"))
        return commands

    def on_mount(self) -> None:
        self.set_interval(1.0, self.poll_watched)
        self.app.jobs.subscribe(self.on_job_events)
        for job in sorted(self.app.jobs.jobs.values(), key=lambda j: j.started):
            self.on_job_events(job, list(job.history))
        self.apply_layout()

    def on_unmount(self) -> None:
        self.app.jobs.unsubscribe(self.on_job_events)

    def on_resize(self) -> None:
        self.apply_layout()

    def add_metrics(self, row: metrics.Row) -> None:
        """Draw one metrics row of this stage (stages with plots override this)."""

    def reset_view(self) -> None:
        """Clear the stage's own plots and panels (the log, status and progress are cleared here)."""

    def fill_form(self, config: dict) -> None:
        """Show a job's real settings in the form (its config.json as a dict)."""

    def on_stage_event(self, job: Job, event: events.Event) -> None:
        """Stage-specific handling of one event (summaries); metrics rows go to add_metrics."""

    def apply_layout(self) -> None:
        compact = self.size.height < COMPACT_HEIGHT
        self.set_class(compact, "compact")
        if not self.PLOTS:
            return
        single = self.plot_choice if self.plot_choice >= 0 else (0 if compact else -1)
        self.set_class(single >= 0, "single-plot")
        for i, plot_id in enumerate(self.PLOTS):
            self.query_one(f"#{plot_id}").display = single < 0 or i == single

    def action_cycle_plot(self) -> None:
        """One plot after another, then (when the screen has room) all of them again."""
        if not self.PLOTS:
            return
        compact = self.size.height < COMPACT_HEIGHT
        current = self.plot_choice if self.plot_choice >= 0 else (0 if compact else -1)
        following = current + 1
        if following >= len(self.PLOTS):
            following = 0 if compact else -1
        self.plot_choice = following
        self.apply_layout()

    def clear_view(self) -> None:
        self.reset_view()
        self.query_one("#log", RichLog).clear()
        self.query_one("#progress", ProgressBar).update(total=1, progress=0)
        self.history_pending = None

    def follow_job(self, job: Job) -> None:
        """Show this job from now on (it started, or its events are the newest for this stage)."""
        self.watching = None
        self.shown_job, self.shown_run = job, ""
        self.clear_view()

    def begin_run(self, job: Job, event: events.Started) -> None:
        if self.shown_run and self.shown_run != event.run_dir:
            self.clear_view()
        self.shown_run = event.run_dir
        self.history_pending = Path(event.run_dir) if event.resumed else None
        self.fill_form(event.config)

    def draw_history(self, run_dir: Path, before_step: int) -> None:
        """A resumed run's curves up to the point it continues from; live points then extend them."""
        for row in metrics.read_rows(run_dir / metrics.METRICS_FILE, self.STAGE):
            if row.step < before_step:
                self.add_metrics(row)

    def action_resume(self) -> None:
        select = self.query_one("#resume_run", Select)
        if select.is_blank():
            self.notify(
                "no run to resume: pick one under 'resume run' (stopped or interrupted runs)", severity="warning"
            )
            return
        self.action_start(resume=str(select.value))

    def watch_run(self, run_dir: Path) -> None:
        """Follow a run read-only from its metrics.jsonl and status.json, whoever is writing it."""
        if self.app.jobs.running(self.STAGE):
            self.notify(f"a {self.STAGE} job is running here; its live view stays on screen", severity="warning")
            return
        self.shown_job, self.shown_run = None, str(run_dir)
        self.clear_view()
        config = read_record(run_dir / "config.json")
        if config:  # the form shows the settings the watched run was started with
            self.fill_form(config)
        self.watching, self.watch_offset = run_dir, 0
        self.poll_watched()

    def poll_watched(self) -> None:
        if self.watching is None:
            return
        path = self.watching / metrics.METRICS_FILE
        try:
            size = path.stat().st_size
            if size < self.watch_offset:  # rewritten on resume: draw it again from the start
                self.reset_view()
                self.watch_offset = 0
            with open(path, "rb") as f:
                f.seek(self.watch_offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        complete = chunk.rfind(b"\n") + 1  # a line still being written is read on the next poll
        for line in chunk[:complete].splitlines():
            try:
                row = metrics.parse_row(json.loads(line), self.STAGE)
            except (ValueError, RecursionError):
                continue
            if row is not None:
                self.add_metrics(row)
        self.watch_offset += complete
        status = read_status(self.watching)
        owner = (
            f", written by pid {status.get('pid')} on {status.get('host')}" if status.get("state") == "running" else ""
        )
        step = (
            f" · step {status['step']}/{status.get('total_steps', '?')}" if isinstance(status.get("step"), int) else ""
        )
        if (
            isinstance(status.get("step"), int)
            and isinstance(status.get("total_steps"), int)
            and status["total_steps"] > 0
        ):
            self.query_one("#progress", ProgressBar).update(total=status["total_steps"], progress=status["step"])
        self.query_one("#status", Static).update(
            Text(f"watching {self.watching.name}: {status.get('state', 'unknown')}{step} (read-only{owner})")
        )

    def job_title(self, cfg) -> str:
        return self.STAGE

    def start_from_form(self) -> None:
        """Start this stage with the form's settings (the screen's `form_config()`, which raises ConfigError naming
        what to fix); a form that cannot be read is one notification."""
        try:
            cfg = self.form_config()
        except ConfigError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        self.start_job(self.job_title(cfg), REGISTRY[self.STAGE].run, cfg, self.app.workspace)

    def start_job(self, title: str, fn, *args, **kwargs) -> Job | None:
        if self.app.jobs.running(self.STAGE):
            self.notify(f"a {self.STAGE} job is already running; stop it first (ctrl+x)", severity="warning")
            return None
        job = self.app.jobs.start(self.STAGE, title, fn, *args, **kwargs)
        self.follow_job(job)
        self.query_one("#status", Static).update(Text(f"{title}: starting…"))
        return job

    def action_stop(self) -> None:
        job = self.app.jobs.running_stage(self.STAGE)
        if job is None:
            self.notify(f"no {self.STAGE} job is running", severity="warning")
            return
        job.stop.set()
        self.update_status(job)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """enter moves to the next field of the form, and on its last text field starts the run (a dropdown's enter
        opens its list)."""
        fields = [w for w in self.query("#form Input, #form Select") if w.focusable]
        inputs = [w for w in fields if isinstance(w, Input)]
        if inputs and event.input is inputs[-1]:
            self.action_start()
        elif event.input in fields:
            fields[fields.index(event.input) + 1].focus()

    def on_job_events(self, job: Job, batch: list[events.Event]) -> None:
        # a stage's own job, or the guided pipeline job while it runs this stage
        batch = [e for e in batch if e.stage == self.STAGE]
        if not batch:
            if job is self.shown_job:  # the guided run moved on or ended: the status line says so
                self.update_status(job)
            return
        if job is not self.shown_job:
            self.follow_job(job)
        log = self.query_one("#log", RichLog)
        for event in batch:
            if isinstance(event, events.Started):
                self.begin_run(job, event)
            elif isinstance(event, events.Metrics):
                if self.history_pending is not None:
                    self.draw_history(self.history_pending, event.row.step)
                    self.history_pending = None
                self.add_metrics(event.row)
            elif isinstance(event, events.Log):
                style = {"warning": "yellow", "error": "red"}.get(event.level, "")
                log.write(Text(shown(event.message, MAX_MESSAGE), style=style))
            elif isinstance(event, events.Failed):
                message = shown(event.message, MAX_MESSAGE)
                log.write(Text(f"failed: {message}", style="bold red"))
                self.notify(message, severity="error", timeout=10, markup=False)
            self.on_stage_event(job, event)
        self.update_status(job)
        self.lock_form(job.runs_stage(self.STAGE))

    def lock_form(self, locked: bool) -> None:
        """While a job runs, the form shows its settings and cannot be edited (Stop stays usable)."""
        if locked == self.form_locked:  # called for every batch of events: touch the widgets only on a change
            return
        self.form_locked = locked
        for widget in self.query("#form Input, #form Select"):
            widget.disabled = locked

    def status_detail(self, job: Job) -> str:
        p = job.progress_by_stage.get(self.STAGE)
        if p is None:
            return "starting…"
        return f"{p.done:,}/{p.total:,} {p.unit} · ETA {format_duration(p.eta_s)} · {p.rate:,.1f} {p.unit}/s"

    def update_status(self, job: Job) -> None:
        if job is not self.shown_job:
            return
        p = job.progress_by_stage.get(self.STAGE)
        if p is not None and p.total:
            self.query_one("#progress", ProgressBar).update(total=p.total, progress=p.done)
        if job.runs_stage(self.STAGE) and job.stop.is_set():
            detail = f"stopping after the current step… ({self.status_detail(job)})"
        elif job.runs_stage(self.STAGE):
            detail = self.status_detail(job)
        elif job.running:  # a pipeline that has moved on to its next stage
            detail = "done; the guided run goes on"
        else:
            detail = job.state + (f": {job.message}" if job.message else "")
        plan = job.plan_line()
        self.query_one("#status", Static).update(Text(f"{job.title}: {detail}" + (f"\n{plan}" if plan else "")))
