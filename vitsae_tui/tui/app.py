"""The vitsae-tui Textual app: screens as modes, jobs owned by the App, a command palette for every action."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterable
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from vitsae_tui.engine.events import Finished
from vitsae_tui.engine.workspace import Workspace
from vitsae_tui.tui.jobs import JobManager
from vitsae_tui.tui.screens.browser import BrowserScreen
from vitsae_tui.tui.screens.collect import CollectScreen
from vitsae_tui.tui.screens.confirm import ConfirmScreen
from vitsae_tui.tui.screens.home import HomeScreen
from vitsae_tui.tui.screens.train_model import TrainModelScreen
from vitsae_tui.tui.screens.train_sae import TrainSAEScreen


class VitsaeApp(App):
    TITLE = "vitsae-tui"
    CSS_PATH = "app.tcss"
    MODES = {"home": HomeScreen, "train": TrainModelScreen, "collect": CollectScreen, "sae": TrainSAEScreen, "browse": BrowserScreen}
    DEFAULT_MODE = "home"
    BINDINGS = [
        Binding("q", "request_quit", "Quit"),
        Binding("ctrl+q", "request_quit", "Quit", show=False, priority=True),
        Binding("h", "switch_mode('home')", "Home", show=False),
    ]

    def __init__(self, workspace: str | Path | None = None, demo_size: str = "demo"):
        super().__init__()
        self.workspace = Workspace(workspace)
        self.jobs = JobManager(self)
        self.demo_size = demo_size
        self.following_stage: str | None = None
        self.jobs.subscribe(self.follow_pipeline)
        self.sub_title = str(self.workspace.root)

    def on_mount(self) -> None:
        # a dropped SSH link (SIGHUP) or a scheduler's SIGTERM stops every job with a checkpoint before exiting
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: self.run_worker(self._stop_jobs_and_exit(False), group="shutdown"))
        if hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(signal.SIGHUP, lambda: self.run_worker(self._stop_jobs_and_exit(True), group="shutdown"))

    async def _stop_jobs_and_exit(self, hung_up: bool) -> None:
        self.jobs.stop_all()
        await self.jobs.wait_all()
        if hung_up:
            # the terminal is gone: Textual's orderly shutdown would block forever writing to it, and there is no
            # screen left to restore; every checkpoint and status is already on disk
            os._exit(0)
        self.exit()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Home", "The workspace: runs, their state and the next step", lambda: self.switch_mode("home"))
        yield SystemCommand("Guided run", "Build every missing stage on the offline default, then browse", self.action_guided_run)
        yield SystemCommand("Train model", "Configure, start, stop and resume classifier training", lambda: self.switch_mode("train"))
        yield SystemCommand("Collect activations", "Record a hook point's activations into an activation set", lambda: self.switch_mode("collect"))
        yield SystemCommand("Train SAE", "Train a JumpReLU sparse autoencoder on an activation set", lambda: self.switch_mode("sae"))
        yield SystemCommand("Browse features", "Images, patches and SAE features of an index", lambda: self.switch_mode("browse"))
        yield SystemCommand("Build feature index", "Index the newest trained SAE (top examples, densities, concepts)", self.action_build_index)
        if isinstance(screen, BrowserScreen):
            yield SystemCommand("Feature list", "All features, sortable; enter opens one", lambda: screen.action_show("list-view"))
            yield SystemCommand("Go to feature", "Open a feature by id", screen.action_goto_feature)
            yield SystemCommand("Go to image", "Open an image by number", screen.action_goto_image)
            yield SystemCommand("Label feature", "Name the open feature (saved in the workspace)", screen.action_label)
            yield SystemCommand("Export PNG", "Write the feature card or the image with its heatmap as a PNG", screen.action_export)
        if isinstance(screen, TrainSAEScreen):
            yield SystemCommand("Start SAE training", "Train with the form's settings", screen.action_start)
            yield SystemCommand("Stop SAE training", "Stop after saving a checkpoint", screen.action_stop)
            yield SystemCommand("Resume SAE training", "Continue the run chosen under 'resume run'", screen.action_resume)
        if isinstance(screen, CollectScreen):
            yield SystemCommand("Start collecting", "Collect with the form's settings (resumes a matching set)", screen.action_start)
            yield SystemCommand("Stop collecting", "Stop after sealing complete shards", screen.action_stop)
        if isinstance(screen, TrainModelScreen):
            yield SystemCommand("Start training", "Start a run with the form's settings", screen.action_start)
            yield SystemCommand("Stop training", "Stop the running job after saving a checkpoint", screen.action_stop)
            yield SystemCommand("Resume training", "Continue the run chosen under 'resume run'", screen.action_resume)
        yield SystemCommand("Quit vitsae-tui", "Stop running jobs with a checkpoint, then quit", self.action_request_quit)

    STAGE_MODES = {"train-model": "train", "collect": "collect", "train-sae": "sae", "index": "home"}

    def action_guided_run(self, size: str | None = None) -> None:
        """Run every missing stage on the offline default; each stage's screen follows it, the browser opens at the end."""
        from vitsae_tui.engine.pipeline import run_pipeline

        if self.jobs.running():
            self.notify("a job is already running; wait for it or stop it first", severity="warning")
            return
        size = size or self.demo_size
        self.following_stage = None
        self.jobs.start("pipeline", f"guided run ({size})", run_pipeline, self.workspace, size=size)
        self.notify("guided run started: each stage opens as it runs")

    def follow_pipeline(self, job, batch) -> None:
        if job.stage != "pipeline":
            return
        for event in batch:
            mode = self.STAGE_MODES.get(event.stage)
            if mode and event.stage != self.following_stage:
                self.following_stage = event.stage
                self.switch_mode(mode)
            if event.stage == "pipeline" and isinstance(event, Finished):
                self.switch_mode("browse")  # its mount or resume lists the new index

    def action_build_index(self, sae_run: str | None = None) -> None:
        """Index an SAE in a worker; the browser opens it when done."""
        from vitsae_tui.engine.features import build_index

        runs = [r for r in self.workspace.runs("saes") if r.state == "finished"]
        sae_run = sae_run or (runs[0].name if runs else None)
        if sae_run is None:
            self.notify("no finished SAE to index: train one first (a on the home screen)", severity="warning")
            return
        if self.jobs.running("index"):
            self.notify("an index is already being built", severity="warning")
            return
        self.jobs.start("index", f"index {sae_run}", build_index, self.workspace, sae_run)
        self.notify(f"building the feature index of {sae_run}…")

    async def action_request_quit(self) -> None:
        if not self.jobs.running():
            self.exit()
            return

        async def answered(stop: bool | None) -> None:
            if stop:
                self.notify("stopping jobs: saving checkpoints…")
                self.jobs.stop_all()
                await self.jobs.wait_all()
                self.exit()

        self.push_screen(ConfirmScreen("A job is running. Stop it (a checkpoint is saved) and quit?", "Stop and quit", "Keep running"), answered)


def run_app(workspace: str | Path | None = None, demo_size: str = "demo") -> int:
    import multiprocessing.resource_tracker

    # spawned DataLoader workers need the tracker, which cannot start once Textual has redirected stderr
    multiprocessing.resource_tracker.ensure_running()
    app = VitsaeApp(workspace, demo_size)
    try:
        app.run()
    finally:
        # if the UI died with its terminal, the jobs still get to save their checkpoints before the process ends
        app.jobs.stop_all()
        app.jobs.join_threads()
    return 0
