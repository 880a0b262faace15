"""One UserError base: what the user can fix is one sentence; anything else is a bug whose traceback is kept."""

import errno
import threading

import pytest

from tests.helpers import Collector, make_model_run
from vitsae_tui import cli
from vitsae_tui.engine.activation_set import StoreError
from vitsae_tui.engine.config import CollectConfig, ConfigError
from vitsae_tui.engine.data import DataError
from vitsae_tui.engine.device import DeviceError
from vitsae_tui.engine.errors import ERROR_LOG, StageError, UserError
from vitsae_tui.engine.events import Failed
from vitsae_tui.engine.stages import collect as collect_stage
from vitsae_tui.engine.workspace import WorkspaceError, read_json


def collect_cfg(model: str) -> CollectConfig:
    return CollectConfig(model=model, device="cpu", shard_images=20, batch_size=16, name="set")


def test_every_error_the_user_can_fix_is_a_user_error():
    for error in (StageError, ConfigError, DataError, DeviceError, StoreError, WorkspaceError):
        assert issubclass(error, UserError), error


def test_a_user_error_is_its_sentence_and_leaves_no_error_log(workspace):
    report = Collector()
    with pytest.raises(StageError, match="pass --model RUN") as raised:
        collect_stage.run(CollectConfig(device="cpu"), workspace, report, threading.Event())
    assert raised.value.bug is None
    assert [e.message for e in report.of(Failed)] == [str(raised.value)]
    assert not list(workspace.root.rglob(ERROR_LOG))


def test_a_bug_keeps_its_traceback_in_the_runs_error_log(workspace, monkeypatch):
    run = make_model_run(workspace)

    def broken_forward(*args, **kwargs):
        return {}["no such key"]  # an engine bug, not bad input

    monkeypatch.setattr(collect_stage, "_forward", broken_forward)
    report = Collector()
    with pytest.raises(StageError) as raised:
        collect_stage.run(collect_cfg(run), workspace, report, threading.Event())
    set_dir = workspace.run_dir("activations", "set")
    log = set_dir / ERROR_LOG
    assert isinstance(raised.value.bug, KeyError)
    assert str(raised.value).startswith("internal error (KeyError: 'no such key'), please report it")
    assert str(log) in str(raised.value)
    assert "Traceback" in log.read_text() and "broken_forward" in log.read_text()
    status = read_json(set_dir / "status.json")
    assert status["state"] == "failed" and status["message"] == str(raised.value)


def test_a_machine_limit_is_a_sentence_not_a_bug(workspace, monkeypatch):
    run = make_model_run(workspace)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(collect_stage, "_forward", full_disk)
    with pytest.raises(StageError, match="the disk is full") as raised:
        collect_stage.run(collect_cfg(run), workspace, Collector(), threading.Event())
    assert raised.value.bug is None and not list(workspace.root.rglob(ERROR_LOG))


def test_the_cli_prints_a_bugs_traceback_and_exits_1(workspace, monkeypatch, capsys):
    run = make_model_run(workspace)
    monkeypatch.setattr(collect_stage, "_forward", lambda *a, **k: 1 / 0)
    monkeypatch.setattr(cli.StopSignals, "install", lambda self: None)  # pytest keeps its own handlers
    code = cli.main(["collect", "--workspace", str(workspace.root), "--model", run, "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == cli.USER_ERROR
    assert "internal error (ZeroDivisionError: division by zero)" in err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError" in err


def test_every_out_of_memory_wording_gets_the_memory_sentence():
    from vitsae_tui.engine.errors import resource_message

    for error in (
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 4000000000000 bytes. Error code 12 (Cannot allocate memory)"
        ),
        RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"),
        MemoryError(),
    ):
        assert resource_message(error).startswith("the device ran out of memory"), error
    assert resource_message(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
