"""What every stage screen shares: following its job's events, a status line, a progress bar with ETA, a log."""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import ProgressBar, RichLog, Static

from vitsae_tui.engine import events
from vitsae_tui.tui.jobs import Job


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


class StageScreen(Screen):
    """Subclasses set STAGE, compose `#status`, `#progress` and `#log`, and may override `on_stage_event`.

    Textual calls `on_mount` of every class in the MRO (subclass first), so subclasses must not call super().
    """

    STAGE = ""

    def on_mount(self) -> None:
        self.app.jobs.subscribe(self.on_job_events)
        job = self.app.jobs.get(self.STAGE)
        if job is not None:
            self.on_job_events(job, list(job.history))

    def on_unmount(self) -> None:
        self.app.jobs.unsubscribe(self.on_job_events)

    def start_job(self, title: str, fn, *args, **kwargs) -> Job | None:
        if self.app.jobs.running(self.STAGE):
            self.notify(f"a {self.STAGE} job is already running; stop it first (x)", severity="warning")
            return None
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
        if job.stage != self.STAGE:
            return
        log = self.query_one("#log", RichLog)
        for event in batch:
            if isinstance(event, events.Log):
                style = {"warning": "yellow", "error": "red"}.get(event.level, "")
                log.write(f"[{style}]{event.message}[/]" if style else event.message)
            elif isinstance(event, events.Failed):
                log.write(f"[bold red]failed: {event.message}[/]")
                self.notify(event.message, severity="error", timeout=10)
            self.on_stage_event(job, event)
        self.update_status(job)

    def on_stage_event(self, job: Job, event: events.Event) -> None:
        """Stage-specific handling of one event (plots, summaries)."""

    def status_detail(self, job: Job) -> str:
        p = job.progress
        if p is None:
            return "starting…"
        return f"{p.done}/{p.total} {p.unit} · {p.rate:.1f} {p.unit}/s · ETA {format_duration(p.eta_s)}"

    def update_status(self, job: Job) -> None:
        p = job.progress
        if p is not None and p.total:
            self.query_one("#progress", ProgressBar).update(total=p.total, progress=p.done)
        if job.state == "running":
            detail = self.status_detail(job)
        else:
            detail = job.state + (f": {job.message}" if job.message else "")
        self.query_one("#status", Static).update(f"{job.title}: {detail}")
