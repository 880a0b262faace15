import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from vitsae_tui.engine.workspace import (
    Workspace,
    WorkspaceError,
    append_jsonl,
    atomic_torch_save,
    load_torch_file,
    read_jsonl,
    read_status,
    write_status,
)


def test_a_killed_write_leaves_the_old_file_or_the_new_one_never_half(tmp_path):
    target = tmp_path / "big.bin"
    writer = textwrap.dedent(
        f"""
        from pathlib import Path
        from vitsae_tui.engine.workspace import atomic_write_bytes
        i = 0
        while True:
            i += 1
            atomic_write_bytes(Path({str(target)!r}), bytes([i % 256]) * (64 << 20))
        """
    )
    for delay in (0.3, 0.7, 1.1):
        proc = subprocess.Popen([sys.executable, "-c", writer])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if target.exists():
            data = target.read_bytes()
            assert len(data) == 64 << 20 and data.count(data[:1]) == len(data)
    assert not [p for p in tmp_path.iterdir() if p.name != "big.bin" and not p.name.endswith(".tmp")]


def test_new_runs_are_unique_and_names_cannot_escape(workspace):
    first = workspace.new_run("models", "demo")
    second = workspace.new_run("models", "demo")
    assert (first.name, second.name) == ("demo-1", "demo-2")
    with pytest.raises(WorkspaceError, match="not a run name"):
        workspace.run_dir("models", "../../etc")
    with pytest.raises(WorkspaceError, match="no run"):
        workspace.run_dir("models", "demo-9")


def test_metrics_reader_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1, "loss": 2.0})
    append_jsonl(path, {"step": 2, "loss": 1.5})
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]


def test_runs_report_dead_owners_as_interrupted(workspace):
    run = workspace.new_run("models", "demo")
    write_status(run, "running")
    assert workspace.runs("models")[0].state == "running"
    status = (run / "status.json").read_text().replace(f'"pid": {os.getpid()}', '"pid": 999999999')
    (run / "status.json").write_text(status)
    assert workspace.runs("models")[0].state == "interrupted"


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoints_load_tensors_and_refuse_code(tmp_path):
    good = tmp_path / "good.pt"
    atomic_torch_save(good, {"w": torch.ones(2), "step": 3})
    assert load_torch_file(good)["step"] == 3
    evil = tmp_path / "evil.pt"
    torch.save({"payload": Boom()}, evil)
    with pytest.raises(WorkspaceError, match="not a valid checkpoint"):
        load_torch_file(evil)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(WorkspaceError, match="not a valid checkpoint"):
        load_torch_file(junk)


def test_an_unwritable_workspace_is_one_sentence(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WorkspaceError, match="--workspace"):
        Workspace(blocker / "ws")


def test_a_status_too_large_deep_or_with_absurd_fields_reads_as_damaged_or_without_them(workspace):
    run = workspace.new_run("models", "demo")
    (run / "status.json").write_text('{"state": "finished", "pad": "' + "x" * (2 << 20) + '"}')
    assert read_status(run) == {"state": "damaged"}  # refused by its size, before parsing
    (run / "status.json").write_text("[" * 200_000 + "]" * 200_000)
    assert read_status(run) == {"state": "damaged"}
    absurd = {"state": "finished", "updated": 1e20, "started": -1, "pid": 10**30, "host": ["h"], "fvu": 0.5}
    (run / "status.json").write_text(json.dumps(absurd))
    assert read_status(run) == {"state": "finished", "fvu": 0.5}
    (run / "status.json").write_text(json.dumps({"state": ["running"]}))
    assert [r.state for r in workspace.runs("models")] == ["damaged"]


def test_a_run_whose_first_files_cannot_be_written_is_removed_not_left_damaged(workspace):
    def disk_full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        workspace.new_run("saes", "sae", disk_full)
    assert workspace.runs("saes") == []
    started = workspace.new_run("saes", "sae")  # stamped at once: a start killed now is dated and interrupted
    (run,) = workspace.runs("saes")
    assert run.path == started and run.state == "running" and run.updated > 0


def test_a_killed_write_of_a_hidden_file_is_cleaned_up_by_its_name(tmp_path, monkeypatch):
    """The index's pass file is hidden (.sae-1.pass.pt): its temporary file starts with two dots."""
    from vitsae_tui.engine import workspace as workspace_mod

    def killed(*args):
        raise RuntimeError("killed before the rename")

    target = tmp_path / ".sae-1.pass.pt"
    monkeypatch.setattr(workspace_mod.os, "replace", killed)
    monkeypatch.setattr(workspace_mod.os, "unlink", lambda path: None)  # as a SIGKILL would: nothing cleans up
    with pytest.raises(RuntimeError):
        workspace_mod.atomic_write_bytes(target, b"pass")
    monkeypatch.undo()
    assert [p.name.startswith("..sae-1.pass.pt.") for p in tmp_path.iterdir()] == [True]
    workspace_mod.remove_partial_writes(tmp_path, f"{target.name}.")
    assert list(tmp_path.iterdir()) == []
