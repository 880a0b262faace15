"""The worker bridge: engine stages run in App-owned thread workers; their events reach the UI in batches.

The engine's `report` only appends to a thread-safe queue (it never blocks the job); an App timer drains the
queues every ~100 ms and hands each listener one batch, so the UI redraws at a human rate whatever the step rate.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from textual.app import App

from vitsae_tui.engine import events, metrics
from vitsae_tui.engine.errors import StageError, bug_message, log_bug
from vitsae_tui.formatting import STEP_STAGES, plan_line

DRAIN_INTERVAL_S = 0.1

Listener = Callable[["Job", list[events.Event]], None]


@dataclass
class Job:
    stage: str
    title: str
    stop: threading.Event = field(default_factory=threading.Event)
    state: str = "running"
    """running, finished, stopped or failed"""
    run_dir: str = ""
    message: str = ""
    progress: events.Progress | None = None
    progress_by_stage: dict[str, events.Progress] = field(default_factory=dict)
    history: list[events.Event] = field(default_factory=list)
    """every event so far, so a screen opened mid-run can draw the whole curve"""
    active_stage: str = ""
    """the stage this job is running now (a pipeline job runs one stage after another)"""
    last_rows: dict[tuple[str, str], metrics.Row] = field(default_factory=dict)
    """the newest metrics row per (stage, kind): a screen reads only its own stage's rows"""
    plan: events.Plan | None = None
    """a guided run's steps and the one it is at"""
    step_started: float = 0.0
    """when the plan's current step began (time.time())"""
    started: float = field(default_factory=time.time)
    result: Any = None
    thread: threading.Thread | None = None
    ended: bool = False
    """set by the job's thread once it has reported its own Finished or a Failed"""
    _inbox: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def report(self, event: events.Event) -> None:
        if isinstance(event, events.Failed) or (isinstance(event, events.Finished) and event.stage == self.stage):
            self.ended = True
        self._inbox.put(event)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def runs_stage(self, stage: str) -> bool:
        """True while this job is running `stage`, as itself or as a step of a pipeline."""
        return self.running and (self.stage == stage or self.active_stage == stage)

    def plan_line(self) -> str:
        """Where a guided run is: 'step 3 of 5: train SAE · about 4 min left of ~9' ('' for other jobs)."""
        if self.plan is None:
            return ""
        plan = self.plan
        step_stage = STEP_STAGES.get(plan.steps[plan.current]) if plan.current < len(plan.steps) else None
        progress = self.progress_by_stage.get(step_stage) if step_stage == self.active_stage else None
        now = time.time()
        eta = progress.eta_s if progress is not None else None
        return plan_line(plan.steps, plan.current, plan.estimates_s, eta, now - self.step_started, now - self.started)

    def last_row(self, stage: str, kind: str) -> metrics.Row | None:
        return self.last_rows.get((stage, kind))

    def drain(self) -> list[events.Event]:
        batch = []
        while True:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for event in batch:
            if isinstance(event, events.Started):
                self.active_stage = event.stage
                self.progress_by_stage.pop(event.stage, None)  # a new run of the stage starts from 0
                self.last_rows = {key: row for key, row in self.last_rows.items() if key[0] != event.stage}
            elif isinstance(event, events.Progress):
                self.progress = event
                self.progress_by_stage[event.stage] = event
                self.active_stage = event.stage
            elif isinstance(event, events.Plan):
                if self.plan is None or self.plan.current != event.current:
                    self.step_started = time.time()
                self.plan = event
            elif isinstance(event, events.Metrics):
                self.last_rows[(event.stage, event.row.kind)] = event.row
            elif isinstance(event, events.Finished):
                if event.stage == self.active_stage:
                    self.active_stage = ""
                if event.stage == self.stage:
                    self.state, self.run_dir = ("stopped" if event.stopped else "finished"), event.run_dir
            elif isinstance(event, events.Failed):  # a failed stage ends a pipeline job too
                self.state, self.message, self.run_dir = "failed", event.message, event.run_dir or self.run_dir
                self.active_stage = ""
        self.history.extend(batch)
        return batch


class JobManager:
    """Starts stages as thread workers owned by the App, one job per stage at a time, and fans out their events."""

    def __init__(self, app: App):
        self.app = app
        self.jobs: dict[str, Job] = {}
        self.listeners: list[Listener] = []
        self._timer = None

    def start(self, stage: str, title: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Job:
        if self.running(stage):
            raise RuntimeError(f"a {stage} job is already running; stop it first")
        job = Job(stage, title)
        self.jobs[stage] = job

        def work() -> None:
            job.thread = threading.current_thread()
            try:
                job.result = fn(*args, report=job.report, stop=job.stop, **kwargs)
            except StageError:
                return  # the stage already reported its one-sentence Failed event
            except Exception as e:  # a bug outside any stage: its traceback to the workspace's error.log, not a crash
                job.report(events.Failed(stage, bug_message(e, log_bug(e, self.app.workspace.root))))
                return
            if not job.ended:  # a job that returns without its own Finished must not look alive forever
                job.report(events.Finished(stage, "", {}, stopped=job.stop.is_set()))

        self.app.run_worker(work, name=f"job:{stage}", group="jobs", thread=True, exit_on_error=False)
        if self._timer is None:
            self._timer = self.app.set_interval(DRAIN_INTERVAL_S, self._drain)
        return job

    def running(self, stage: str | None = None) -> bool:
        """Is any job running, or (with `stage`) is that stage running, as its own job or inside a pipeline?"""
        if stage is not None:
            return any(job.runs_stage(stage) for job in self.jobs.values())
        return any(job.running for job in self.jobs.values())

    def get(self, stage: str) -> Job | None:
        return self.jobs.get(stage)

    def running_stage(self, stage: str) -> Job | None:
        """The job running `stage` now (its own job or a pipeline in that stage), if any."""
        return next((job for job in self.jobs.values() if job.runs_stage(stage)), None)

    def stop_all(self) -> None:
        for job in self.jobs.values():
            if job.running:
                job.stop.set()

    def join_threads(self, timeout_s: float = 600.0) -> None:
        """Block until every job's thread has returned (for use after the App has exited)."""
        deadline = time.monotonic() + timeout_s
        for job in self.jobs.values():
            if job.thread is not None:
                job.thread.join(max(0.0, deadline - time.monotonic()))

    def subscribe(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def _drain(self) -> None:
        for job in list(self.jobs.values()):
            batch = job.drain()
            if batch:
                for listener in list(self.listeners):
                    listener(job, batch)

    async def wait_all(self, timeout_s: float = 600.0) -> None:
        """Wait until every job's worker has returned (after a stop request they checkpoint first)."""
        workers = [w for w in self.app.workers if w.group == "jobs"]
        deadline = time.monotonic() + timeout_s
        for worker in workers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await worker.wait()
            except Exception:
                pass
        self._drain()
