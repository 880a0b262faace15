"""What every stage screen shares: following its job's events, a status line, a progress bar with ETA, a log."""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import ProgressBar, RichLog, Select, Static

from vitsae_tui.engine import events
from vitsae_tui.engine.workspace import read_jsonl
from vitsae_tui.tui.jobs import Job


def read_status(run_dir: Path) -> dict:
    try:
        status = json.loads((run_dir / "status.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


START_STOP_BINDINGS = [
    Binding("s", "start", "Start"),
    Binding("x", "stop", "Stop"),
    Binding("escape", "app.switch_mode('home')", "Home"),
]
RESUMABLE_BINDINGS = [*START_STOP_BINDINGS[:2], Binding("r", "resume", "Resume"), START_STOP_BINDINGS[2]]


class StageScreen(Screen):
    """Subclasses set STAGE, compose `#status`, `#progress` and `#log`, and may override `on_stage_event`.

    Textual calls `on_mount` of every class in the MRO (subclass first), so subclasses must not call super().
    """

    STAGE = ""
    RUN_KIND = ""
    """the workspace folder of this stage's runs, for screens that resume them ("models", "saes")"""
    watching: Path | None = None
    """a run folder followed live from its files (finished, failed, or written by another process)"""
    watch_offset = 0

    def on_mount(self) -> None:
        self.set_interval(1.0, self.poll_watched)
        self.app.jobs.subscribe(self.on_job_events)
        for job in self.app.jobs.jobs.values():
            self.on_job_events(job, list(job.history))

    def on_unmount(self) -> None:
        self.app.jobs.unsubscribe(self.on_job_events)

    def add_metrics(self, row: dict) -> None:
        """Draw one metrics row (stages with plots override this)."""

    def reset_view(self) -> None:
        """Clear plots and panels (stages with plots override this)."""

    def action_resume(self) -> None:
        select = self.query_one("#resume_run", Select)
        if select.is_blank():
            self.notify("no run to resume: pick one under 'resume run' (stopped or interrupted runs)", severity="warning")
            return
        self.action_start(resume=str(select.value))

    def draw_history(self, run: str) -> None:
        """A resumed run's curves up to the checkpoint it continues from; live points then extend them."""
        run_dir = self.app.workspace.root / self.RUN_KIND / run
        checkpoint_step = read_status(run_dir).get("step", 0)
        for row in read_jsonl(run_dir / "metrics.jsonl"):
            if isinstance(row.get("step"), int) and row["step"] <= checkpoint_step:
                self.add_metrics(row)

    def watch_run(self, run_dir: Path) -> None:
        """Follow a run read-only from its metrics.jsonl and status.json, whoever is writing it."""
        if self.app.jobs.running(self.STAGE):
            self.notify(f"a {self.STAGE} job is running here; its live curves stay on screen", severity="warning")
            return
        self.reset_view()
        self.watching, self.watch_offset = run_dir, 0
        self.poll_watched()

    def poll_watched(self) -> None:
        if self.watching is None:
            return
        path = self.watching / "metrics.jsonl"
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
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                self.add_metrics(row)
        self.watch_offset += complete
        status = read_status(self.watching)
        owner = f", written by pid {status.get('pid')} on {status.get('host')}" if status.get("state") == "running" else ""
        step = f" · step {status['step']}/{status.get('total_steps', '?')}" if isinstance(status.get("step"), int) else ""
        self.query_one("#status", Static).update(
            f"watching {self.watching.name}: {status.get('state', 'unknown')}{step} (read-only{owner})")

    def start_job(self, title: str, fn, *args, **kwargs) -> Job | None:
        if self.app.jobs.running(self.STAGE):
            self.notify(f"a {self.STAGE} job is already running; stop it first (x)", severity="warning")
            return None
        self.watching = None
        self.query_one("#log", RichLog).clear()
        self.query_one("#progress", ProgressBar).update(total=1, progress=0)
        job = self.app.jobs.start(self.STAGE, title, fn, *args, **kwargs)
        self.query_one("#status", Static).update(f"{title}: starting…")
        return job

    def action_stop(self) -> None:
        job = self.app.jobs.get(self.STAGE)
        if job is None or not job.running:
            self.notify(f"no {self.STAGE} job is running", severity="warning")
            return
        job.stop.set()
        self.query_one("#status", Static).update("stopping: saving what is complete…")

    def on_job_events(self, job: Job, batch: list[events.Event]) -> None:
        # a stage's own job, or the guided pipeline job while it runs this stage
        batch = [e for e in batch if e.stage == self.STAGE]
        if not batch:
            return
        log = self.query_one("#log", RichLog)
        for event in batch:
            if isinstance(event, events.Log):
                style = {"warning": "yellow", "error": "red"}.get(event.level, "")
                log.write(f"[{style}]{escape(event.message)}[/]" if style else escape(event.message))
            elif isinstance(event, events.Failed):
                log.write(f"[bold red]failed: {escape(event.message)}[/]")
                self.notify(event.message, severity="error", timeout=10, markup=False)
            self.on_stage_event(job, event)
        self.update_status(job)

    def on_stage_event(self, job: Job, event: events.Event) -> None:
        """Stage-specific handling of one event (plots, summaries)."""

    def status_detail(self, job: Job) -> str:
        p = job.progress_by_stage.get(self.STAGE)
        if p is None:
            return "starting…"
        return f"{p.done}/{p.total} {p.unit} · {p.rate:.1f} {p.unit}/s · ETA {format_duration(p.eta_s)}"

    def update_status(self, job: Job) -> None:
        p = job.progress_by_stage.get(self.STAGE)
        if p is not None and p.total:
            self.query_one("#progress", ProgressBar).update(total=p.total, progress=p.done)
        if job.state == "running":
            detail = self.status_detail(job)
        else:
            detail = job.state + (f": {escape(job.message)}" if job.message else "")
        self.query_one("#status", Static).update(f"{job.title}: {detail}")
