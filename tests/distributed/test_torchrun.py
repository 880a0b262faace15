"""Data parallelism under torchrun with gloo on CPU: 2 ranks equal 1 process, a lost rank leaves a resumable run."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import TINY_MODEL, Collector, tiny_train_config, write_activation_set
from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.config import SAETrainConfig, sweep_configs
from vitsae_tui.engine.distributed import Ranks
from vitsae_tui.engine.errors import StageError
from vitsae_tui.engine.stages.train_model import run as train_model
from vitsae_tui.engine.stages.train_sae import run as train_sae
from vitsae_tui.engine.stages.train_sae import run_sweep
from vitsae_tui.engine.workspace import Workspace, load_torch_file, read_json

pytestmark = pytest.mark.slow  # the whole suite runs these; the fast tier leaves them out

REPO = Path(__file__).resolve().parents[2]


def torchrun(
    *args: str, nproc: int = 2, timeout: float = 240, **popen
) -> subprocess.CompletedProcess | subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if popen:
        return subprocess.Popen(command, cwd=REPO, env=env, text=True, **popen)
    return subprocess.run(command, cwd=REPO, env=env, text=True, capture_output=True, timeout=timeout)


def activation_set(ws: Workspace, n_images: int = 120, d: int = 16) -> str:
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((n_images, 36, d)) * rng.gamma(1.0, 1.0, (n_images, 36, 1))
    return write_activation_set(ws, "set", acts.astype(np.float32))


def sae_args(ws: Workspace, **overrides) -> list[str]:
    options = {
        "activations": "set",
        "batch_size": 256,
        "tokens": 256 * 24,
        "expansion": 4,
        "device": "cpu",
        "log_every": 4,
        "eval_every": 1000,
        "checkpoint_every": 8,
        "lr": 3e-3,
        **overrides,
    }
    return [
        "-m",
        "vitsae_tui",
        "train-sae",
        "--workspace",
        str(ws.root),
        *[a for k, v in options.items() for a in (f"--{k.replace('_', '-')}", str(v))],
    ]


def test_ranks_split_every_global_batch_and_refuse_uneven_batches():
    for world in (1, 2, 3, 5):
        for n in (0, 1, 7, 256, 1001):
            parts = [Ranks(r, world, torch.device("cpu")).local_rows(n) for r in range(world)]
            assert parts[0].start == 0 and parts[-1].stop == n
            assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
            assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1
    with pytest.raises(StageError, match="multiple of 3"):
        Ranks(0, 3, torch.device("cpu")).check_divisible(256)


@pytest.mark.parametrize("resident", ["yes", "no"])  # tokens in memory, or streamed from the shards
def test_two_ranks_train_the_same_sae_as_one_process(tmp_path, resident):
    single, double = Workspace(tmp_path / "one"), Workspace(tmp_path / "two")
    for ws in (single, double):
        activation_set(ws)
    cfg = config_mod.from_dict(
        SAETrainConfig,
        {
            "activations": "set",
            "batch_size": 256,
            "tokens": 256 * 24,
            "expansion": 4,
            "device": "cpu",
            "log_every": 4,
            "eval_every": 1000,
            "checkpoint_every": 8,
            "lr": 3e-3,
            "resident": resident,
        },
    )
    reference = train_sae(cfg, single, Collector(), threading.Event())
    result = torchrun(*sae_args(double, resident=resident))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"x 2 processes ({'resident' if resident == 'yes' else 'streamed'} data)" in result.stderr
    ours = load_file(str(double.root / "saes" / "sae-1" / "sae.safetensors"))
    theirs = load_file(str(reference.run_dir / "sae.safetensors"))
    for name in theirs:
        if name != "threshold":
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5, msg=name)
    # θ's gradient counts the tokens inside |z - θ| < ε/2: the other summation order of 2 processes can move one token
    # across that edge, moving that feature's θ by part of one Adam step (3.7e-5 measured, streamed); the rest match
    theta_gap = (ours["threshold"] - theirs["threshold"]).abs()
    assert int((theta_gap > 1e-5 + 1e-4 * theirs["threshold"].abs()).sum()) <= 2, theta_gap.max()
    assert float(theta_gap.max()) < cfg.lr * cfg.theta_lr_scale, theta_gap.max()
    # rank 0 alone wrote the metrics: one row per log step, the same numbers as the single process
    rows = [json.loads(line) for line in (double.root / "saes" / "sae-1" / "metrics.jsonl").read_text().splitlines()]
    reference_rows = [json.loads(line) for line in (reference.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in reference_rows]
    for ours_row, ref_row in zip(rows, reference_rows):
        for key in ("mse", "l0", "fvu", "tokens"):
            if key in ref_row:
                assert ours_row[key] == pytest.approx(ref_row[key], rel=1e-4), key
    assert read_json(double.root / "saes" / "sae-1" / "status.json")["state"] == "finished"
    assert (double.root / "saes" / "sae-1" / "saelens" / "cfg.json").exists()


def test_two_ranks_train_the_same_sweep_as_one_process(tmp_path):
    single, double = Workspace(tmp_path / "one"), Workspace(tmp_path / "two")
    for ws in (single, double):
        activation_set(ws)
    base = config_mod.from_dict(
        SAETrainConfig,
        {"activations": "set", "batch_size": 256, "tokens": 256 * 24, "expansion": 4, "device": "cpu", "lr": 3e-3},
    )
    reference = run_sweep(
        sweep_configs(base, arch=("jumprelu", "topk"), k=(8,)), single, Collector(), threading.Event()
    )
    result = torchrun(*sae_args(double, arch="jumprelu,topk", k=8, log_every=20, checkpoint_every=500, eval_every=500))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sweep-1: 2 SAEs in one pass" in result.stderr
    for run in reference:
        ours = load_file(str(double.root / "saes" / run.run_dir.name / "sae.safetensors"))
        theirs = load_file(str(run.run_dir / "sae.safetensors"))
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5, msg=f"{run.run_dir.name} {name}")
    refused = torchrun(*sae_args(double, arch="batchtopk"))
    assert refused.returncode != 0 and "batchtopk trains in one process" in refused.stderr


def test_two_ranks_train_the_same_model_as_one_process(tmp_path):
    # no dropout: its masks are random per rank; BatchNorm statistics are synchronised across the ranks
    cfg = tiny_train_config(
        model=dataclasses.replace(TINY_MODEL, dropout=0.0),
        epochs=1,
        data=dataclasses.replace(tiny_train_config().data, n_train=64, n_val=16),
    )
    single, double = Workspace(tmp_path / "one"), Workspace(tmp_path / "two")
    # in float32, Adam turns rounding noise in near-zero gradients (key biases, conv biases before BatchNorm) into
    # lr-sized steps; float64 (the worker uses it too) leaves only real differences
    torch.set_default_dtype(torch.float64)
    try:
        reference = train_model(cfg, single, Collector(), threading.Event())
    finally:
        torch.set_default_dtype(torch.float32)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config_mod.to_dict(cfg)))
    result = torchrun("tests/distributed/train_tiny_model.py", str(double.root), str(config_path))
    assert result.returncode == 0, result.stderr[-3000:]
    ours = load_torch_file(double.root / "models" / "demo-1" / "last.pt")
    theirs = load_torch_file(reference.run_dir / "last.pt")
    assert ours["step"] == theirs["step"] == 4
    for name, value in theirs["model"].items():
        torch.testing.assert_close(ours["model"][name], value, rtol=1e-7, atol=1e-9, msg=name)
    ours_val = read_json(double.root / "models" / "demo-1" / "status.json")["best_val_loss"]
    assert ours_val == pytest.approx(reference.best_val_loss, rel=1e-9)


def _child_with_rank(parent_pid: int, rank: int) -> int | None:
    for task in Path(f"/proc/{parent_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(child)
    return None


def test_killing_one_rank_fails_the_job_clearly_and_one_process_resumes(tmp_path):
    ws = Workspace(tmp_path / "ws")
    activation_set(ws, n_images=400, d=32)
    job = torchrun(
        *sae_args(ws, tokens=256 * 100_000, checkpoint_every=20, log_every=10),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    run_dir = ws.root / "saes" / "sae-1"
    deadline = time.monotonic() + 120
    while not (run_dir / "trainer.pt").exists():
        assert job.poll() is None and time.monotonic() < deadline, "the job never wrote a checkpoint"
        time.sleep(0.2)
    victim = _child_with_rank(job.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    output, _ = job.communicate(timeout=120)
    assert job.returncode != 0
    assert "another process of this torchrun job stopped" in output and "--resume sae-1" in output
    status = read_json(run_dir / "status.json")
    assert status["state"] == "failed" and "--resume sae-1" in status["message"]
    saved = load_torch_file(run_dir / "trainer.pt")  # the last checkpoint is whole and loads
    assert saved["step"] % 20 == 0 and saved["step"] >= 20
    load_file(str(run_dir / "sae.safetensors"))

    # one process picks it up from that checkpoint, with fewer total tokens so the test stays short
    config = read_json(run_dir / "config.json")
    (run_dir / "config.json").write_text(json.dumps({**config, "tokens": 256 * (saved["step"] + 10)}))
    finished = train_sae(
        config_mod.from_dict(SAETrainConfig, config), ws, Collector(), threading.Event(), resume="sae-1"
    )
    assert finished.step == saved["step"] + 10 and not finished.stopped
