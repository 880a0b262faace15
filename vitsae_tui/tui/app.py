"""The vitsae-tui Textual app: screens as modes, jobs owned by the App, a command palette for every action."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.command import CommandPalette
from textual.screen import Screen

from vitsae_tui.engine.config import IndexConfig
from vitsae_tui.engine.errors import ERROR_LOG, log_bug
from vitsae_tui.engine.events import Finished
from vitsae_tui.engine.stages import BY_KIND, REGISTRY, STAGES
from vitsae_tui.engine.text import shown
from vitsae_tui.engine.workspace import Workspace
from vitsae_tui.tui.commands import SafeCommandPalette
from vitsae_tui.tui.jobs import JobManager
from vitsae_tui.tui.screens.browser import BrowserScreen
from vitsae_tui.tui.screens.collect import CollectScreen
from vitsae_tui.tui.screens.compare import CompareScreen
from vitsae_tui.tui.screens.confirm import ConfirmScreen
from vitsae_tui.tui.screens.home import HomeScreen
from vitsae_tui.tui.screens.import_model import ImportModelScreen
from vitsae_tui.tui.screens.index import IndexScreen
from vitsae_tui.tui.screens.train_model import TrainModelScreen
from vitsae_tui.tui.screens.train_sae import TrainSAEScreen

STAGE_SCREENS = (TrainModelScreen, ImportModelScreen, CollectScreen, TrainSAEScreen, IndexScreen)


class VitsaeApp(App):
    TITLE = "vitsae-tui"
    CSS_PATH = "app.tcss"
    # a stage's screen is its mode, under the stage's registry name; the index stage runs from home and the browser
    MODES = {
        "home": HomeScreen,
        **{screen.STAGE: screen for screen in STAGE_SCREENS},
        "browse": BrowserScreen,
        "compare": CompareScreen,
    }
    DEFAULT_MODE = "home"
    MODE_TITLES = {"home": "Home", "browse": "Feature browser", "compare": "Compare SAEs"}
    BINDINGS = [
        Binding("q", "request_quit", "Quit"),
        Binding("ctrl+q", "request_quit", "Quit", show=False, priority=True),
        Binding("question_mark,f1", "help", "Help", show=False),
    ]

    def __init__(self, workspace: str | Path | None = None, demo_size: str = "demo"):
        super().__init__()
        self.workspace = Workspace(workspace)
        self.jobs = JobManager(self)
        self.demo_size = demo_size
        self.following_stage: str | None = None
        self.lineage_selection: tuple[str, str] | None = None
        """the run (kind, name) whose lineage home shows and the guided run completes; None: the best one"""
        self.jobs.subscribe(self.follow_pipeline)
        self.sub_title = shown(path_tail(self.workspace.root))

    def on_mount(self) -> None:
        # a dropped SSH link (SIGHUP) or a scheduler's SIGTERM stops every job with a checkpoint before exiting
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(
            signal.SIGTERM, lambda: self.run_worker(self._stop_jobs_and_exit(False), group="shutdown")
        )
        if hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(
                signal.SIGHUP, lambda: self.run_worker(self._stop_jobs_and_exit(True), group="shutdown")
            )

    async def _stop_jobs_and_exit(self, hung_up: bool) -> None:
        self.jobs.stop_all()
        await self.jobs.wait_all()
        if hung_up:
            # the terminal is gone: Textual's orderly shutdown would block forever writing to it, and there is no
            # screen left to restore; every checkpoint and status is already on disk
            os._exit(0)
        self.exit()

    def lineage_run(self, kind: str) -> str | None:
        """The finished run of one kind in the shown lineage: the default input of the stage that reads it."""
        from vitsae_tui.engine.pipeline import lineage, lineage_input

        return lineage_input(lineage(self.workspace, self.lineage_selection), BY_KIND[kind].name)

    async def open_run(self, kind: str, name: str) -> None:
        """Show one run on its stage's screen (an index in the browser): live while written, else from its files."""
        mode = BY_KIND[kind].name if BY_KIND[kind].name in self.MODES and kind != "features" else "browse"
        await self.switch_mode(mode)  # awaited, so a screen opened for the first time is mounted before use
        while len(self.screen_stack) > 1:  # a prompt left open on that screen: the run asked for comes first
            await self.pop_screen()
        self.screen.show_run(self.workspace.run_dir(kind, name))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        # the built-in Quit would exit at once, without stopping running jobs with a checkpoint; the built-in Keys
        # panel stayed docked across screens and did not close with esc
        for command in super().get_system_commands(screen):
            if command.title not in ("Quit", "Keys"):
                yield command
        yield SystemCommand("Keys", "The keys of this screen and what they do (also ? or F1)", self.action_help)
        yield SystemCommand(
            "Home", "The workspace: runs, their state and the next step", lambda: self.switch_mode("home")
        )
        yield SystemCommand(
            "Guided run", "Build every missing stage on the offline default, then browse", self.action_guided_run
        )
        for stage in (s for s in STAGES if s.name in self.MODES):
            yield SystemCommand(
                stage.title, stage.summary[:1].upper() + stage.summary[1:], partial(self.switch_mode, stage.name)
            )
        yield SystemCommand(
            "Browse features", "Images, patches and SAE features of an index", lambda: self.switch_mode("browse")
        )
        yield SystemCommand(
            "Compare SAEs",
            "Every SAE of an activation set: FVU and KL recovered against L0, the Pareto set",
            lambda: self.switch_mode("compare"),
        )
        yield SystemCommand(
            "Quit", "Quit vitsae-tui (asks first, and stops running jobs with a checkpoint)", self.action_request_quit
        )

    def action_guided_run(self, size: str | None = None) -> None:
        """Run every missing stage on the offline default; each stage's screen follows it, then the browser opens."""
        from vitsae_tui.engine.pipeline import data_label, run_pipeline

        if self.jobs.running():
            self.notify("a job is already running; wait for it or stop it first", severity="warning")
            return
        size = size or self.demo_size
        self.following_stage = None
        title = f"guided run on {data_label(self.workspace, self.lineage_selection)}"
        title += f" ({size})" if title.endswith("synthetic") else ""
        self.jobs.start("pipeline", title, run_pipeline, self.workspace, size=size, selected=self.lineage_selection)
        self.notify(f"{title} started: each stage opens as it runs", markup=False)

    def follow_pipeline(self, job, batch) -> None:
        if job.stage != "pipeline":
            return
        for event in batch:
            # each stage's own screen follows it
            mode = event.stage if event.stage in self.MODES else None
            if mode and event.stage != self.following_stage:
                self.following_stage = event.stage
                self.switch_mode(mode)
            if event.stage == "pipeline" and isinstance(event, Finished) and not event.stopped:
                index = event.summary.get("index")
                if index:  # home and the stage screens now follow the lineage the guided run completed
                    self.lineage_selection = ("features", index)
                self.call_later(self.open_built_index)

    async def open_built_index(self) -> None:
        index = self.lineage_run("features")
        if index is not None:
            await self.open_run("features", index)
        else:
            await self.switch_mode("browse")

    def action_build_index(self, sae_run: str | None = None) -> None:
        """Index an SAE (by default the shown lineage's) in a worker, shown live on the Index screen."""
        stage = REGISTRY["index"]
        sae_run = sae_run or self.lineage_run("saes")
        if sae_run is None:
            self.notify(
                "the shown lineage has no finished SAE to index: train one first (a), or select one on home",
                severity="warning",
            )
            return
        if self.jobs.running(stage.name):
            self.notify("an index is already being built", severity="warning")
            return
        self.jobs.start(stage.name, f"index {sae_run}", stage.run, IndexConfig(sae=sae_run), self.workspace)
        self.switch_mode(stage.name)

    def _handle_exception(self, error: Exception) -> None:
        # a bug in the app itself: the traceback goes to the workspace's error.log and the jobs stop with a
        # checkpoint before Textual ends the app (run_app then exits non-zero)
        log_bug(error, self.workspace.root)
        self.jobs.stop_all()
        super()._handle_exception(error)

    def action_command_palette(self) -> None:
        if self.use_command_palette and not CommandPalette.is_open(self):
            self.push_screen(SafeCommandPalette(id="--command-palette"))

    def action_help(self) -> None:
        """The current screen's keys, from its bindings."""
        from vitsae_tui.tui.screens.help import HelpScreen, screen_keys

        if isinstance(self.screen, HelpScreen):
            return
        title = self.MODE_TITLES.get(self.current_mode) or REGISTRY[self.current_mode].title
        self.push_screen(HelpScreen(title, screen_keys(self.screen)))

    async def action_help_quit(self) -> None:
        await self.action_request_quit()  # ctrl+c with no text selected quits like q (asking while a job runs)

    async def action_quit(self) -> None:
        await self.action_request_quit()  # every way out asks first and stops jobs with a checkpoint

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

        self.push_screen(
            ConfirmScreen(
                "A job is running. Stop it (a checkpoint is saved) and quit?", "Stop and quit", "Keep running"
            ),
            answered,
        )


def path_tail(path: Path, parts: int = 3) -> str:
    """A long path by its last folders ('…/runs/exp-12/ws'): a narrow title bar cuts the end, which tells them apart."""
    tail = Path(*path.parts[-parts:]) if len(path.parts) > parts + 1 else path
    return str(path) if tail == path else f"…/{tail}"


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
    code = app.return_code or 0
    if code:
        with contextlib.suppress(OSError):  # the terminal may be gone
            print(f"vitsae-tui stopped on an internal error; the traceback is in {app.workspace.root / ERROR_LOG}")
    end_if_threads_linger(code)
    return code


def end_if_threads_linger(code: int, grace_s: float = 2.0) -> None:
    """Exit now if a thread outlives the app: Textual's input thread spins forever on a terminal that hung up
    during a crash, and Python would wait for it at exit. Every job has returned and saved by then."""
    lingering = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    for thread in lingering:
        thread.join(grace_s)
    if any(thread.is_alive() for thread in lingering):
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
