"""Errors: one UserError base for everything the user reads as a sentence; anything else is a bug with a traceback."""

from __future__ import annotations

import errno
import traceback
from pathlib import Path

ERROR_LOG = "error.log"


class UserError(Exception):
    """Bad input, a missing artifact or a machine limit: the message is one sentence that says what to do."""


class OutOfRange(UserError, IndexError):
    """An image, token or feature number outside what the artifact holds (the user's to fix, never a bug)."""


class StopRequested(Exception):
    """Raised inside a phase that checks the stop event but cannot return a partial result; the stage catches it
    and ends stopped, saving what it can."""


def check_stop(stop) -> None:
    """Raise StopRequested when `stop` (a threading.Event, or None) is set."""
    if stop is not None and stop.is_set():
        raise StopRequested


class StageError(UserError, RuntimeError):
    """A stage could not run; the message is one sentence for the user."""

    def __init__(self, message: str, bug: BaseException | None = None):
        super().__init__(message)
        self.bug = bug
        """the unexpected exception behind it, when it was a bug (its traceback is in error.log)"""


def resource_message(error: BaseException) -> str | None:
    """The sentence for a machine limit (memory, disk, permissions), or None when the error is not one."""
    text = str(error).lower()
    # CUDA's OutOfMemoryError, MPS's and CUDA's wording, the CPU allocator's and Python's own
    if (
        type(error).__name__ == "OutOfMemoryError"
        or isinstance(error, MemoryError)
        or any(words in text for words in ("out of memory", "can't allocate memory", "cannot allocate memory"))
    ):
        return (
            "the device ran out of memory; start again with a smaller --batch-size, or resume once more memory "
            "is free (the last checkpoint is intact)"
        )
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "the disk is full; free some space and resume the run (the last checkpoint is intact)"
    if isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        where = f" ({error.filename})" if error.filename else ""
        return f"the workspace cannot be written{where}; pass --workspace DIR with a writable folder"
    return None


def is_user_error(error: BaseException) -> bool:
    return isinstance(error, UserError) or resource_message(error) is not None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def user_message(error: BaseException) -> str:
    return resource_message(error) or first_line(error)


def log_bug(error: BaseException, log_dir: Path | None) -> Path | None:
    """Write a bug's traceback to `log_dir/error.log` (appended; None when it cannot be written)."""
    if log_dir is None:
        return None
    path = Path(log_dir) / ERROR_LOG
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.write("".join(traceback.format_exception(error)) + "\n")
    except OSError:
        return None
    return path


def bug_message(error: BaseException, log_path: Path | None) -> str:
    where = f"; the traceback is in {log_path}" if log_path else ""
    return f"internal error ({type(error).__name__}: {first_line(error)}), please report it{where}"
