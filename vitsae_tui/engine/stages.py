"""What every stage shares when it fails: a one-sentence message, the run marked failed, a Failed event."""

from __future__ import annotations

from pathlib import Path

from vitsae_tui.engine.events import Failed, Report
from vitsae_tui.engine.workspace import write_status


class StageError(RuntimeError):
    """A stage could not run; the message is one sentence for the user."""


def user_message(error: BaseException) -> str:
    if type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower():
        return "the device ran out of memory; lower --batch-size and resume the run"
    if isinstance(error, OSError) and error.errno == 28:
        return "the disk is full; free some space and resume the run (the last checkpoint is intact)"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def stage_failed(stage: str, error: BaseException, report: Report, run_dir: Path | None = None,
                 message: str | None = None, mark_run: bool = True) -> StageError:
    """Report a failure and return the StageError to raise; the run folder, if any, is marked failed."""
    message = message or user_message(error)
    if mark_run and run_dir is not None and run_dir.is_dir():
        write_status(run_dir, "failed", message=message)
    report(Failed(stage, message, str(run_dir or "")))
    return StageError(message)
