"""A closed log reader never ends a run, a stop request never fails one, and a duplicate signal is one request."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vitsae_tui.engine.workspace import read_json

pytestmark = pytest.mark.slow  # the whole suite runs these; the fast tier leaves them out

REPO = Path(__file__).resolve().parents[2]
TRAIN = ["train-model", "--preset", "demo", "--n-train", "200", "--n-val", "40", "--epochs", "60", "--device", "cpu"]


def start(ws: Path, *args: str) -> tuple[subprocess.Popen, int]:
    """The CLI with stdout and stderr both into one pipe (as `2>&1 | reader`); returns it and the pipe's read end."""
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "vitsae_tui", *args, "--workspace", str(ws)],
        cwd=REPO,
        stdout=write_end,
        stderr=write_end,
    )
    os.close(write_end)
    return process, read_end


def status(ws: Path) -> dict:
    try:
        return read_json(ws / "models" / "demo-1" / "status.json")
    except Exception:
        return {}


def wait_until(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_reader_that_closes_does_not_stop_the_run_and_ctrl_c_still_stops_it_cleanly(tmp_path):
    process, read_end = start(tmp_path / "ws", *TRAIN)
    os.read(read_end, 300)  # `| head -c 300`
    os.close(read_end)
    wait_until(lambda: int(status(tmp_path / "ws").get("step") or 0) >= 5)
    step = int(status(tmp_path / "ws")["step"])
    wait_until(lambda: int(status(tmp_path / "ws").get("step") or 0) > step + 10)  # printing went on, into nothing
    assert process.poll() is None and status(tmp_path / "ws")["state"] == "running"
    process.send_signal(signal.SIGINT)  # the handler writes to the closed pipe too
    assert process.wait(60) == 0
    final = status(tmp_path / "ws")
    assert final["state"] == "stopped" and final.get("message", "") == ""
    assert (tmp_path / "ws" / "models" / "demo-1" / "last.pt").exists()
    assert not (tmp_path / "ws" / "models" / "demo-1" / "error.log").exists()


def test_two_sigterms_50_ms_apart_are_one_stop_request_and_print_no_traceback(tmp_path):
    process, read_end = start(tmp_path / "ws", *TRAIN)
    wait_until(lambda: int(status(tmp_path / "ws").get("step") or 0) >= 5)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    output = b""
    while chunk := os.read(read_end, 65536):
        output += chunk
    os.close(read_end)
    text = output.decode()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert text.count("SIGTERM: stopping after the current step") == 1
    assert status(tmp_path / "ws")["state"] == "stopped"


def test_a_later_second_signal_forces_the_exit_with_one_line_naming_the_checkpoint(monkeypatch, capsys):
    import threading

    from vitsae_tui import cli
    from vitsae_tui.engine.events import Started

    exits = []
    monkeypatch.setattr(cli.os, "_exit", lambda code: exits.append(code))
    clock = iter([100.0, 100.05, 102.0])
    monkeypatch.setattr(cli.time, "monotonic", lambda: next(clock))
    stop = threading.Event()
    signals = cli.StopSignals(stop)
    signals.follow(lambda e: None)(Started("train-sae", "/ws/saes/sae-3", {}))
    signals.handle(signal.SIGTERM, None)
    signals.handle(signal.SIGTERM, None)  # 50 ms later: the same request
    assert stop.is_set() and exits == []
    signals.handle(signal.SIGINT, None)  # two seconds later: forced
    assert exits == [130]
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert lines[-1] == (
        "vitsae-tui: forced exit before the stop finished; saes/sae-3 keeps its last checkpoint; "
        "`vitsae-tui train-sae --resume sae-3` continues it"
    )


@pytest.mark.parametrize("command", [["runs"], ["train-model", "--help"]])
def test_read_only_commands_into_a_closed_pipe_end_quietly(tmp_path, command):
    (tmp_path / "ws").mkdir()
    process, read_end = start(tmp_path / "ws", *command)
    os.close(read_end)
    assert process.wait(60) in (0,)
