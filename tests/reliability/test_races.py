"""Two writers of one run, started together as real processes: exactly one writes, the other is refused with the
owner's pid and host, and a dead owner's claim is free at once (the kernel drops it with the process)."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.reliability import stage_runner
from vitsae_tui.engine.activation_set import ActivationSet
from vitsae_tui.engine.feature_index import FeatureIndex
from vitsae_tui.engine.workspace import Workspace, WorkspaceError, claim_run, read_jsonl

FORKSERVER = stage_runner.FORKSERVER
start = stage_runner.start
TRIALS = 30


def claim_at(run_dir: str, start_at: float, hold_s: float, outcome: str) -> None:
    """A child: at `start_at`, claim the run and hold it, writing what happened to `outcome`."""
    time.sleep(max(0.0, start_at - time.time()))
    try:
        with claim_run(Path(run_dir)):
            Path(outcome).write_text(json.dumps({"claimed": True}))
            time.sleep(hold_s)
    except WorkspaceError as e:
        Path(outcome).write_text(json.dumps({"claimed": False, "message": str(e)}))


@pytest.mark.slow
def test_of_two_processes_claiming_a_run_together_exactly_one_wins_every_time(tmp_path):
    ws = Workspace(tmp_path / "ws")
    start_at = time.time() + 3.0  # every child forked and waiting before the first claim
    children = []
    for trial in range(TRIALS):
        run_dir = ws.kind_dir("saes") / f"sae-{trial}"
        for side in "ab":
            child = FORKSERVER.Process(
                target=claim_at, args=(str(run_dir), start_at, 1.0, str(tmp_path / f"{trial}{side}")), daemon=True
            )
            child.start()
            children.append(child)
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    pids = {child.pid for child in children}
    for trial in range(TRIALS):
        a, b = (json.loads((tmp_path / f"{trial}{side}").read_text()) for side in "ab")
        assert a["claimed"] != b["claimed"], f"trial {trial}: {a} {b}"
        refused = b if a["claimed"] else a
        owner = int(refused["message"].split("process ")[1].split()[0])
        assert (
            owner in pids
            and f"saes/sae-{trial} is being written by process {owner} on {os.uname()[1]}" in (refused["message"])
        )


def test_a_killed_owners_claim_is_free_at_once(tmp_path):
    run_dir = Workspace(tmp_path / "ws").kind_dir("models") / "demo-1"
    owner = FORKSERVER.Process(target=claim_at, args=(str(run_dir), 0.0, 60.0, str(tmp_path / "owner")), daemon=True)
    owner.start()
    deadline = time.time() + 30
    while not (tmp_path / "owner").exists():
        assert time.time() < deadline
        time.sleep(0.01)
    with pytest.raises(WorkspaceError, match=f"process {owner.pid} "):
        claim_run(run_dir)
    os.kill(owner.pid, signal.SIGKILL)
    owner.join(10)
    claim_run(run_dir).release()


def race(stage: str, root: Path, resume: bool) -> None:
    """Start the same stage twice at once: exactly one succeeds; the other fails before writing anything."""
    started = [start(stage, root, resume) for _ in range(2)]  # each child's shared counter must outlive its start
    children = [child for child, _ in started]
    for child in children:
        child.join(300)
    assert sorted(child.exitcode for child in children) == [0, 1], f"{stage}: {[c.exitcode for c in children]}"


def interrupt_after_a_checkpoint(stage: str, root: Path) -> None:
    child, announced = start(stage, root, False)
    deadline = time.time() + 120
    while announced.value < 2 * stage_runner.CHECKPOINT_INTERVAL[stage]:
        assert child.is_alive() and time.time() < deadline, f"{stage} ended before its second checkpoint"
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)


@pytest.mark.slow
def test_every_stage_started_twice_at_once_is_written_by_one_process(tmp_path):
    root = tmp_path / "ws"
    ws = Workspace(root)
    interrupt_after_a_checkpoint("train-model", root)
    race("train-model", root, resume=True)
    assert [r.state for r in ws.runs("models")] == ["finished"]
    race("collect", root, resume=False)
    store = ActivationSet(ws.run_dir("activations", "set"))
    assert store.n_images == stage_runner.MODEL.data.n_train  # a synthetic set is drawn as the model was trained
    assert not list(store.path.glob(".*.tmp"))
    interrupt_after_a_checkpoint("train-sae", root)
    race("train-sae", root, resume=True)
    steps = [row["step"] for row in read_jsonl(ws.run_dir("saes", "sae-1") / "metrics.jsonl") if row["kind"] == "step"]
    assert len(steps) == len(set(steps)), "two processes trained the same run"
    assert [r.state for r in ws.runs("saes")] == ["finished"]
    race("index", root, resume=False)
    assert FeatureIndex(ws, "sae-1").n_images == store.n_images
