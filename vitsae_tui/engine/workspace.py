"""Where runs live on disk: run folders, atomic writes, metrics logs, status records and safe loading."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitsae_tui.engine.errors import UserError

KINDS = ("models", "activations", "saes", "features")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class WorkspaceError(UserError, RuntimeError):
    """A workspace problem the user can fix; the message says how."""


def default_workspace() -> Path:
    env = os.environ.get("VITSAE_WORKSPACE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("vitsae-tui"))


def workspace_args(root: Path) -> list[str]:
    """The --workspace flag a printed command needs to reach the workspace at root (none for the default one)."""
    return [] if root.resolve() == default_workspace().resolve() else ["--workspace", str(root)]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it: readers see old or new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """The object with NaN and infinite floats replaced by null: JSON has no such numbers (Python would write them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False))


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_torch_file(path: Path) -> Any:
    """torch.load that never unpickles code: tensors, dicts, lists and numbers only."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WorkspaceError(f"{path} does not exist; train or pick another run") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise WorkspaceError(
            f"{path} is not a valid checkpoint and was not loaded ({reason}); pick another run"
        ) from None


def remove_partial_writes(folder: Path, prefix: str = "") -> None:
    """Delete the temporary files of atomic writes a killed process left behind; only for folders nobody is writing."""
    for tmp in Path(folder).glob(f".{prefix}*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


MAX_JSON_BYTES = 64 << 20
"""the largest workspace JSON file read; a manifest (one entry per image) passes its own, larger limit"""
MAX_RECORD_BYTES = 1 << 20
"""the largest status.json or config.json read: they hold a few fields, so a bigger one is damaged"""


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A workspace JSON file, refused before parsing when too large and after when nested too deep for Python."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise WorkspaceError(
                f"{path} is {size / 2**20:.0f} MiB, more than the {max_bytes / 2**20:.0f} MiB such a file can be; "
                "it is damaged: delete the run"
            )
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise WorkspaceError(f"{path} is missing; the run is incomplete, re-run it or pick another") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise WorkspaceError(f"{path} is not valid JSON; fix it or delete the run") from None
    except RecursionError:
        raise WorkspaceError(f"{path} is nested too deeply to be a run file; delete the run") from None
    except OSError as e:
        raise WorkspaceError(f"{path} cannot be read ({e.strerror}); check its permissions") from None


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one line and flush it to disk, so a reader in another process sees whole rows only."""
    line = json.dumps(json_safe(row), sort_keys=True, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete rows; a torn last line (a write in progress or a kill mid-write) is ignored."""
    rows = []
    try:
        text = Path(path).read_text("utf-8", errors="replace")
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def truncate_jsonl(path: Path, keep: callable) -> None:
    """Rewrite a metrics log keeping only rows for which keep(row) holds (used on resume)."""
    rows = [r for r in read_jsonl(path) if keep(r)]
    atomic_write_text(path, "".join(json.dumps(json_safe(r), sort_keys=True, allow_nan=False) + "\n" for r in rows))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class RunInfo:
    kind: str
    name: str
    path: Path
    status: dict[str, Any]
    config: dict[str, Any]

    @property
    def state(self) -> str:
        state = self.status.get("state", "unknown")
        if state == "running" and not _owner_alive(self.status):
            return "interrupted"
        return state

    @property
    def updated(self) -> float:
        value = self.status.get("updated")
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def _owner_alive(status: dict[str, Any]) -> bool:
    """Whether the process that wrote a 'running' status still lives (only knowable on the same host)."""
    if status.get("host") != socket.gethostname():
        return True
    pid = status.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Workspace:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root else default_workspace()
        try:
            for kind in (*KINDS, "data"):
                (self.root / kind).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WorkspaceError(
                f"cannot use {self.root} as the workspace ({e.strerror}); pass --workspace DIR with a writable folder"
            ) from None

    @classmethod
    def existing(cls, root: str | os.PathLike | None = None) -> Workspace:
        """A workspace that must already exist, for commands that only read (they never create the folder)."""
        path = Path(root).expanduser() if root else default_workspace()
        if not path.is_dir():
            raise WorkspaceError(f"no workspace at {path}; check --workspace, or build one there (vitsae-tui demo)")
        return cls(path)

    @property
    def cli_args(self) -> list[str]:
        return workspace_args(self.root)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def kind_dir(self, kind: str) -> Path:
        assert kind in KINDS, kind
        return self.root / kind

    def run_dir(self, kind: str, name: str) -> Path:
        """The folder of an existing run; names are plain folder names, never paths."""
        if not RUN_NAME.match(name or ""):
            raise WorkspaceError(f"{name!r} is not a run name; use a name from `vitsae-tui runs`")
        path = self.kind_dir(kind) / name
        if not path.is_dir():
            raise WorkspaceError(f"no run {name!r} in {kind}/; use a name from `vitsae-tui runs`")
        return path

    def new_run(
        self, kind: str, prefix: str, setup: Callable[[Path], None] = lambda path: None, numbered: bool = True
    ) -> Path:
        """Create and claim a fresh run folder `<prefix>-<n>`, or `<prefix>` itself when not `numbered` (mkdir is
        atomic, so two processes never share one; an existing name is a WorkspaceError).

        The folder is stamped as running by this process, then `setup` writes its first files; when either fails the
        folder is removed, so a failed start never leaves an undated, damaged run behind.
        """
        if not RUN_NAME.match(prefix):
            raise WorkspaceError(f"{prefix!r} cannot start a run name; use letters, digits, '.', '_' or '-'")
        if not numbered:
            path = self.kind_dir(kind) / prefix
            try:
                path.mkdir()
            except FileExistsError:
                raise WorkspaceError(f"{kind}/{prefix} already exists; pick another name") from None
            return self._set_up(path, setup)
        existing = [p.name for p in self.kind_dir(kind).iterdir()]
        numbers = [int(m.group(1)) for n in existing if (m := re.fullmatch(rf"{re.escape(prefix)}-(\d+)", n))]
        n = max(numbers, default=0) + 1
        while True:
            path = self.kind_dir(kind) / f"{prefix}-{n}"
            try:
                path.mkdir()
                break
            except FileExistsError:
                n += 1
        return self._set_up(path, setup)

    @staticmethod
    def _set_up(path: Path, setup: Callable[[Path], None]) -> Path:
        try:
            write_status(path, "running")
            setup(path)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return path

    def runs(self, kind: str) -> list[RunInfo]:
        """Runs of one kind, newest first; unreadable records are shown as 'damaged' rather than hidden."""
        infos = []
        try:
            paths = list(self.kind_dir(kind).iterdir())
        except FileNotFoundError:  # the workspace was deleted under a running app: it lists nothing
            return []
        for path in paths:
            if not path.is_dir() or path.name.startswith("."):
                continue
            infos.append(RunInfo(kind, path.name, path, read_status(path), read_record(path / "config.json") or {}))
        return sorted(infos, key=lambda r: (r.updated, r.name), reverse=True)


def read_record(path: Path) -> dict[str, Any] | None:
    """A small JSON object (status.json, config.json): None when missing, too large, not an object or unreadable."""
    try:
        record = read_json(path, MAX_RECORD_BYTES)
    except WorkspaceError:
        return None
    return record if isinstance(record, dict) else None


STATES = ("running", "finished", "failed", "stopped", "interrupted")
MAX_TIMESTAMP = 1e11
"""seconds since 1970 (year 5138): a later time cannot be shown, so it counts as damaged"""


def read_status(run_dir: Path) -> dict[str, Any]:
    """A run's status with its protocol fields checked (state, owner, times); {'state': 'damaged'} when unusable.

    Fields a kind adds (metrics, counts) are left as written: their readers check each one's type.
    """
    status = read_record(Path(run_dir) / "status.json")
    if status is None or status.get("state") not in STATES:
        return {"state": "damaged"}
    for key in ("updated", "started"):
        value = status.get(key)
        if key in status and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_TIMESTAMP
        ):
            del status[key]
    pid = status.get("pid")
    if "pid" in status and not (isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**31):
        del status["pid"]
    for key in ("host", "message"):
        if key in status and not isinstance(status[key], str):
            del status[key]
    return status


class RunClaim:
    """One process's exclusive claim on a run: an flock on `.locks/<kind>.<name>.lock` in the workspace, which the
    kernel drops when the process dies however it dies, so a claim is never stale and a second writer is refused
    while the first lives."""

    def __init__(self, fd: int):
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> RunClaim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_owner(lock_path: Path) -> str:
    owner: dict[str, Any] = {}
    for _ in range(100):  # the owner writes its name just after taking the lock
        owner = read_record(lock_path) or {}
        if "pid" in owner:
            break
        time.sleep(0.005)
    return f"process {owner.get('pid', '?')} on {owner.get('host', '?')}"


def claim_run(run_dir: Path) -> RunClaim:
    """Claim a run (existing or about to be created) for writing; WorkspaceError naming the live owner otherwise."""
    import fcntl

    run_dir = Path(run_dir)
    locks = run_dir.parent.parent / ".locks"
    locks.mkdir(exist_ok=True)
    lock_path = locks / f"{run_dir.parent.name}.{run_dir.name}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WorkspaceError(
            f"{run_dir.parent.name}/{run_dir.name} is being written by {_lock_owner(lock_path)}; watch it from "
            "the app (enter on its row) or stop that process first"
        ) from None
    except OSError as e:  # ENOLCK: a filesystem without locks (some network mounts)
        os.close(fd)
        raise WorkspaceError(
            f"cannot lock {lock_path} ({e.strerror}); put the workspace on a local disk (--workspace DIR)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
    except OSError:  # a full disk: the lock holds without its owner's name
        pass
    return RunClaim(fd)


def write_status(run_dir: Path, state: str, **fields: Any) -> dict[str, Any]:
    """Record a run's state with its owner (host, pid) so other processes can tell live runs from dead ones."""
    previous = read_status(run_dir)
    status = previous if previous.get("state") != "damaged" else {}
    status.update(fields)
    status.update(state=state, updated=time.time(), host=socket.gethostname(), pid=os.getpid())
    status.setdefault("started", status["updated"])
    atomic_write_json(run_dir / "status.json", status)
    return status
