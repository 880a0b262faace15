"""Standard output and error that a closed reader cannot break: once the pipe's reader has gone (`| head`, `| tee`
then Ctrl-C), writes are dropped and the run goes on to its checkpoint."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys


class ReaderGoneSafeStream(io.TextIOBase):
    """A text stream that writes through to `stream` until the reader has gone, then drops every write; the file
    descriptor is pointed at /dev/null, so the interpreter's own flush at exit cannot fail either."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream
        self.reader_gone = False

    def _drop(self) -> None:
        self.reader_gone = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)

    def _guarded(self, call, default=None):
        if self.reader_gone:
            return default
        try:
            return call()
        except BrokenPipeError:
            self._drop()
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.EIO, errno.EBADF):
                raise
            self._drop()
        except ValueError:  # "I/O operation on closed file"
            self._drop()
        return default

    def write(self, text: str) -> int:
        self._guarded(lambda: self.stream.write(text))
        return len(text)

    def flush(self) -> None:
        self._guarded(self.stream.flush)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return bool(self._guarded(self.stream.isatty, False))

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:
        return getattr(self.stream, "errors", None)


def guard_standard_streams() -> None:
    """Replace sys.stdout and sys.stderr with streams a closed reader cannot break (once per process)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, ReaderGoneSafeStream):
            setattr(sys, name, ReaderGoneSafeStream(stream))


def say(text: str) -> None:
    """One line on stderr from a signal handler: never raises, whatever happened to the terminal or the pipe."""
    with contextlib.suppress(Exception):
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
