"""SIGHUP (the SSH link dropped) and SIGTERM (a scheduler's stop) during every stage, in the CLI and in the app:
a checkpoint is written, the process exits cleanly, and the next start offers to resume."""

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.test_tmux import Tmux
from tests.helpers import Collector
from tests.reliability import stage_runner
from vitsae_tui.engine.activation_set import Manifest
from vitsae_tui.engine.config import IndexConfig
from vitsae_tui.engine.events import Progress
from vitsae_tui.engine.stages.collect import run as collect
from vitsae_tui.engine.stages.index import run as build_index
from vitsae_tui.engine.stages.train_model import run as train_model
from vitsae_tui.engine.stages.train_sae import run as train_sae
from vitsae_tui.engine.workspace import Workspace, load_torch_file, read_json

pytestmark = pytest.mark.slow  # the whole suite runs these; the fast tier leaves them out

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    """A model run with room left to train (stopped after its first epoch), a collected set, an SAE and its index."""
    ws = Workspace(tmp_path_factory.mktemp("signals"))
    stop = threading.Event()
    long_model = dataclasses.replace(stage_runner.MODEL, epochs=50)
    train_model(
        long_model, ws, Collector(stop, lambda e: isinstance(e, Progress) and e.unit == "steps" and e.done >= 12), stop
    )
    collect(stage_runner.COLLECT, ws, Collector(), threading.Event())
    train_sae(dataclasses.replace(stage_runner.SAE, tokens=256 * 100), ws, Collector(), threading.Event())
    build_index(IndexConfig(sae="sae-1", device="cpu"), ws, Collector(), threading.Event())
    return ws


def cli(ws: Workspace, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vitsae_tui", *args, "--workspace", str(ws.root)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition, timeout_s: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def running_with(run_dir: Path, pid: int, key: str = "step", beyond: int = 0) -> bool:
    try:
        status = read_json(run_dir / "status.json")
    except Exception:
        return False
    return status.get("pid") == pid and status.get("state") == "running" and int(status.get(key, 0) or 0) > beyond


def metrics_beyond(run_dir: Path, step: int) -> bool:
    from vitsae_tui.engine.workspace import read_jsonl

    return any(int(r.get("step", 0)) > step for r in read_jsonl(run_dir / "metrics.jsonl"))


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_cli_train_model_and_train_sae_checkpoint_and_exit_on_signal(workspace, sig):
    ws = workspace
    model_dir = ws.run_dir("models", "demo-1")
    before = int(load_torch_file(model_dir / "last.pt")["step"])
    job = cli(ws, "train-model", "--resume", "demo-1")
    wait_until(lambda: metrics_beyond(model_dir, before + 5), what="model training to make progress")
    job.send_signal(sig)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 0, err
    assert f"{sig.name}: stopping after the current step and saving a checkpoint" in err
    status = read_json(model_dir / "status.json")
    saved = load_torch_file(model_dir / "last.pt")
    assert status["state"] == "stopped" and saved["step"] == status["step"] > before

    sae_job = cli(
        ws,
        "train-sae",
        "--activations",
        "set",
        "--tokens",
        str(256 * 1_000_000),
        "--batch-size",
        "256",
        "--device",
        "cpu",
        "--log-every",
        "5",
        "--checkpoint-every",
        "1000000",
    )
    sae_dir = ws.kind_dir("saes") / ("sae-2" if sig == signal.SIGHUP else "sae-3")
    wait_until(lambda: metrics_beyond(sae_dir, 20), what="SAE training to make progress")
    sae_job.send_signal(sig)
    _, err = sae_job.communicate(timeout=120)
    assert sae_job.returncode == 0, err
    status = read_json(sae_dir / "status.json")
    assert status["state"] == "stopped" and load_torch_file(sae_dir / "trainer.pt")["step"] == status["step"] > 20
    assert "resume with --resume" in err  # the CLI says how to continue


def test_cli_collect_and_index_stop_cleanly_on_signal(workspace):
    ws = workspace
    job = cli(
        ws,
        "collect",
        "--model",
        "demo-1",
        "--name",
        "slow",
        "--batch-size",
        "1",
        "--shard-images",
        "8",
        "--n-train",
        "480",
        "--n-val",
        "32",
        "--device",
        "cpu",
    )
    set_dir = ws.kind_dir("activations") / "slow"
    wait_until(
        lambda: (set_dir / "manifest.json").exists() and read_json(set_dir / "manifest.json")["n_images"] >= 16,
        what="two sealed shards",
    )
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 0, err
    manifest = Manifest.load(set_dir)
    assert not manifest.complete and manifest.n_images % 8 == 0 and manifest.n_images < 480
    assert read_json(set_dir / "status.json")["state"] == "stopped"
    # the same command continues it
    again = cli(
        ws,
        "collect",
        "--model",
        "demo-1",
        "--name",
        "slow",
        "--batch-size",
        "16",
        "--shard-images",
        "8",
        "--n-train",
        "480",
        "--n-val",
        "32",
        "--device",
        "cpu",
    )
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert read_json(set_dir / "manifest.json")["complete"]

    # a stopped index keeps its pass so far and the same command continues it; the complete index there is untouched
    index_dir = ws.kind_dir("features") / "sae-1"
    before = (index_dir / "index.json").read_bytes()
    job = cli(ws, "index", "--sae", "sae-1", "--device", "cpu")
    lines = follow(job.stderr)
    wait_until(lambda: any("indexing saes/sae-1" in line for line in lines), what="the index to start")
    job.send_signal(signal.SIGHUP)
    job.wait(timeout=120)
    err = "".join(lines)
    assert job.returncode == 0, err
    assert "the same command continues from there" in err
    assert (index_dir / "index.json").read_bytes() == before
    assert (index_dir.parent / ".sae-1.pass.pt").exists()
    again = cli(ws, "index", "--sae", "sae-1", "--device", "cpu")
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0 and "continuing the index pass" in err, err
    assert not (index_dir.parent / ".sae-1.pass.pt").exists()


def follow(stream) -> list[str]:
    """The lines a child writes, collected by a thread as they come."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")), daemon=True).start()
    return lines


@pytest.mark.parametrize("how", ["hang-up", "sigterm"])
def test_app_stops_its_job_with_a_checkpoint_on_hangup_or_sigterm(tmp_path, how):
    ws_root = tmp_path / "ws"
    tmux = Tmux(ws_root, demo_size="tiny")  # the signal, not the demo's size, is under test here
    try:
        tmux.wait_for("guided run|Press g", timeout_s=60)
        tmux.keys("g")
        sae_dir = ws_root / "saes" / "sae-1"
        wait_until(lambda: metrics_beyond(sae_dir, 20), timeout_s=240, what="the guided run's SAE stage")
        pid = read_json(sae_dir / "status.json")["pid"]
        if how == "hang-up":
            tmux.run("kill-session", "-t", tmux.session)  # what a dropped SSH connection does: SIGHUP to the app
        else:
            os.kill(pid, signal.SIGTERM)  # the terminal stays: the app exits the orderly way and restores it
        wait_until(lambda: not _alive(pid), timeout_s=120, what="the app to exit")
        status = read_json(sae_dir / "status.json")
        assert status["state"] == "stopped", status
        assert load_torch_file(sae_dir / "trainer.pt")["step"] == status["step"]
    finally:
        tmux.close()
    # the next start shows the run as stopped and offers to resume it
    again = Tmux(ws_root, demo_size="tiny")
    try:
        again.wait_for(r"resume or redo the sae stage", timeout_s=60)
    finally:
        again.close()


CRASHING_APP = """
import sys
from vitsae_tui.cli import main
from vitsae_tui.tui.app import VitsaeApp

def planted_bug(self):
    raise ZeroDivisionError("a planted bug")

VitsaeApp.action_command_palette = planted_bug  # ctrl+p crashes the app
sys.exit(main(sys.argv[1:]))
"""


def test_a_crash_then_a_hang_up_in_a_real_terminal_ends_the_app_and_keeps_its_job(tmp_path):
    """The app crashes while the guided run trains, then its terminal closes: no process is left computing."""
    script = tmp_path / "crashing_app.py"
    script.write_text(CRASHING_APP)
    ws_root = tmp_path / "ws"
    tmux = Tmux(ws_root, demo_size="tiny", python_args=str(script))
    try:
        tmux.wait_for("guided run|Press g", timeout_s=60)
        tmux.keys("g")
        model_dir = ws_root / "models" / "demo-1"
        wait_until(lambda: metrics_beyond(model_dir, 2), timeout_s=120, what="the guided run's training")
        pid = read_json(model_dir / "status.json")["pid"]
        tmux.keys("C-p")
        time.sleep(0.5)
        tmux.run("kill-session", "-t", tmux.session)  # the user closes the terminal showing the crash
        wait_until(lambda: not _alive(pid), timeout_s=60, what="the crashed app to exit")
    finally:
        tmux.close()
    status = read_json(model_dir / "status.json")
    assert status["state"] in ("stopped", "finished"), status  # its job stopped with a checkpoint, or had finished
    assert "a planted bug" in (ws_root / "error.log").read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by tmux) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
