"""The run recorder every stage writes through: it claims the run folder, turns any failure into one sentence (and a
bug's traceback into `error.log`), writes status, metric rows and artifacts from the main process only, rate-limits
progress, and ends the stage with one Finished. A stage's own code is then only its loop.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitsae_tui.engine import metrics
from vitsae_tui.engine.errors import StageError, bug_message, is_user_error, log_bug, user_message
from vitsae_tui.engine.events import (
    ArtifactWritten,
    Failed,
    Finished,
    Log,
    Metrics,
    Progress,
    RateMeter,
    Report,
    Started,
    progress_callback,
)
from vitsae_tui.engine.workspace import claim_run, write_status

PROGRESS_EVERY_S = 0.25


@dataclass(frozen=True)
class StageResult:
    """What every stage returns: the run folder it wrote and whether it ended early on request."""

    run_dir: Path
    stopped: bool


def due(step: int, every: int, last_step: int) -> bool:
    """Whether a step-cadenced action (logging, evaluation, checkpointing) happens after `step`: every `every`
    steps and at the last one."""
    return step % every == 0 or step == last_step


class RunRecorder:
    """One stage run's bookkeeping. Under torchrun every rank holds one; only rank 0's writes reach the disk."""

    def __init__(self, stage: str, report: Report, stop: threading.Event, held: contextlib.ExitStack):
        self.stage, self.report, self.stop, self.held = stage, report, stop, held
        self.run_dir: Path | None = None
        """the run folder this stage writes once claimed (a failure marks it failed)"""
        self.also_failed: list[Path] = []
        """further run folders marked failed with it (the rest of a sweep)"""
        self.ranks = None
        """the torchrun ranks once set up (None: one process, which is the main one)"""
        self.mark_failed = True
        """whether a failure marks the run folder failed (an index never is: an older complete one stays usable)"""
        self.log_dir: Path | None = None
        """where a bug's traceback goes when there is no run folder yet"""
        self.meter = RateMeter()
        self._last_progress = 0.0

    @property
    def is_main(self) -> bool:
        return self.ranks is None or self.ranks.is_main

    # -- the run folder --------------------------------------------------------------------------------------------

    def claim(self, run_dir: Path) -> Path:
        """Hold the run folder for this process until the stage returns (a second writer is refused)."""
        self.held.enter_context(claim_run(run_dir))
        return run_dir

    def status(self, state: str, run_dir: Path | None = None, **fields: Any) -> None:
        if self.is_main:
            write_status(run_dir or self.run_dir, state, **fields)

    def started(self, config: dict[str, Any], resumed: bool = False) -> None:
        self.report(Started(self.stage, str(self.run_dir), config, resumed=resumed))

    def finished(self, summary: dict[str, Any], stopped: bool = False, status: bool = True) -> None:
        """The stage's end: its final status (unless the stage wrote its own) and one Finished event."""
        if status:
            self.status("stopped" if stopped else "finished", **summary, message="")
        self.report(Finished(self.stage, str(self.run_dir), summary, stopped))

    # -- what the user watches -------------------------------------------------------------------------------------

    def log(self, message: str, level: str = "info") -> None:
        self.report(Log(self.stage, message, level))

    def artifact(self, path: Path, what: str) -> None:
        self.report(ArtifactWritten(self.stage, str(path), what))

    def progress(self, done: int, total: int, unit: str, final: bool = False) -> None:
        """A Progress event at most every PROGRESS_EVERY_S (and always when `final`)."""
        now = time.perf_counter()
        if final or now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            rate = 0.0 if final else self.meter.update(done)
            self.report(Progress(self.stage, done, total, unit, self.meter.elapsed_s, rate))

    def sub_progress(self, unit: str):
        """A (done, total) callable for a sub-step (drawing images, a phase of the index)."""
        return progress_callback(self.report, self.stage, unit)

    def metrics(self, row: metrics.Row, run_dir: Path | None = None) -> None:
        """One metric row: appended to the run's metrics.jsonl (main process) and reported."""
        if self.is_main:
            metrics.append_row((run_dir or self.run_dir) / metrics.METRICS_FILE, row)
        self.report(Metrics(self.stage, row))

    def truncate_metrics(self, last_step: int | None, run_dir: Path | None = None) -> None:
        """Drop the metric rows after `last_step` (all of them when None): a resumed run writes them again."""
        if self.is_main:
            metrics.truncate_rows((run_dir or self.run_dir) / metrics.METRICS_FILE, last_step)

    def stop_requested(self) -> bool:
        """Whether a stop was asked for (under torchrun: on any rank; every rank gets the same answer)."""
        asked = self.stop.is_set()
        return self.ranks.any(asked) if self.ranks is not None else asked

    # -- failure ---------------------------------------------------------------------------------------------------

    def failed(self, error: BaseException) -> StageError:
        """Report a failure and return the StageError to raise; the run folders, if any, are marked failed.

        A UserError or a machine limit is reported as its sentence; anything else is a bug, whose traceback goes to
        `error.log` in the run folder (or `log_dir`). Under torchrun only rank 0 marks the run, and a lost peer's
        message says how to resume.
        """
        from vitsae_tui.engine.distributed import RankLost  # torch: only once something failed

        run_dir = self.run_dir if self.is_main else None
        message = None
        if isinstance(error, RankLost) and self.run_dir is not None:
            message = (
                f"{error}; {self.run_dir.parent.name}/{self.run_dir.name} keeps its last checkpoint: resume it with "
                f"--resume {self.run_dir.name} on any number of processes"
            )
        bug = None if is_user_error(error) else error
        if message is None and bug is not None:
            log_dir = self.log_dir or (run_dir if run_dir is not None and run_dir.is_dir() else None)
            message = bug_message(error, log_bug(error, log_dir))
        message = message or user_message(error)
        if self.mark_failed and run_dir is not None:
            for folder in [run_dir, *self.also_failed]:
                with contextlib.suppress(OSError):  # a full or read-only disk: the user still gets the message
                    if folder.is_dir():
                        write_status(folder, "failed", message=message)
        self.report(Failed(self.stage, message, str(self.run_dir or "")))
        return StageError(message, bug)


@contextlib.contextmanager
def recording(stage: str, report: Report, stop: threading.Event) -> Iterator[RunRecorder]:
    """A RunRecorder for the body of a stage's run(): its claims are released when the body ends, and any exception
    leaves it as the one-sentence StageError the recorder reported."""
    with contextlib.ExitStack() as held:
        recorder = RunRecorder(stage, report, stop, held)
        try:
            yield recorder
        except Exception as e:
            raise recorder.failed(e) from e


def report_failure(stage: str, message: str, report: Report) -> StageError:
    """A failure outside any run folder (a guided run refusing to start), reported and returned to raise."""
    report(Failed(stage, message))
    return StageError(message)
