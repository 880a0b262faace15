"""What every stage shares when it fails: a one-sentence message, the run marked failed, a Failed event."""

from __future__ import annotations

import errno
from pathlib import Path

from vitsae_tui.engine.events import Failed, Report
from vitsae_tui.engine.workspace import write_status


class StageError(RuntimeError):
    """A stage could not run; the message is one sentence for the user."""


def user_message(error: BaseException) -> str:
    if type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower():
        return ("the device ran out of memory; start again with a smaller --batch-size, or resume once more memory "
                "is free (the last checkpoint is intact)")
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "the disk is full; free some space and resume the run (the last checkpoint is intact)"
    if isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        where = f" ({error.filename})" if error.filename else ""
        return f"the workspace cannot be written{where}; pass --workspace DIR with a writable folder"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def stage_failed(stage: str, error: BaseException, report: Report, run_dir: Path | None = None,
                 message: str | None = None, mark_run: bool = True) -> StageError:
    """Report a failure and return the StageError to raise; the run folder, if any, is marked failed."""
    message = message or user_message(error)
    if mark_run and run_dir is not None and run_dir.is_dir():
        try:
            write_status(run_dir, "failed", message=message)
        except OSError:  # a full or read-only disk: the user still gets the message
            pass
    report(Failed(stage, message, str(run_dir or "")))
    return StageError(message)
