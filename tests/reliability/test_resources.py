"""Full disks, read-only workspaces, out-of-memory and non-finite activations: one sentence for the user, the last
checkpoint intact, and a resume (after the cause is fixed) ending where an uninterrupted run would."""

import errno
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.helpers import Collector, make_model_run, write_activation_set
from vitsae_tui.engine.activation_set import ActivationSet, StoreError
from vitsae_tui.engine.config import CollectConfig, DataConfig, SAETrainConfig
from vitsae_tui.engine.errors import StageError
from vitsae_tui.engine.events import Failed, Metrics
from vitsae_tui.engine.saes import jumprelu as sae_mod
from vitsae_tui.engine.saes import run as sae_run
from vitsae_tui.engine.stages import train_sae as train_sae_mod
from vitsae_tui.engine.stages.collect import run as collect
from vitsae_tui.engine.workspace import Workspace, load_torch_file, read_json

REPO = Path(__file__).resolve().parents[2]
SAE = dict(
    activations="set",
    batch_size=128,
    tokens=128 * 120,
    expansion=4,
    device="cpu",
    log_every=10,
    eval_every=1000,
    checkpoint_every=20,
)


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MiB file system (tmpfs), so 'disk full' and 'read-only' are the kernel's, not a mock's."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"this machine cannot mount a tmpfs ({result.stderr.strip()}); the injected faults below still run")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path) -> Path:
    """Take every free byte of a file system."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    return filler


def activations(ws: Workspace) -> None:
    rng = np.random.default_rng(0)
    write_activation_set(
        ws, "set", (rng.standard_normal((40, 36, 16)) * rng.gamma(1, 1, (40, 36, 1))).astype(np.float32)
    )


def reference_sae(tmp_path) -> dict:
    ws = Workspace(tmp_path / "reference")
    activations(ws)
    run = train_sae(SAETrainConfig(**SAE), ws, Collector(), threading.Event())
    return load_file(str(run.run_dir / "sae.safetensors"))


def train_sae(*args, **kwargs):
    return train_sae_mod.run(*args, **kwargs)


def assert_same_weights(run_dir: Path, reference: dict) -> None:
    ours = load_file(str(run_dir / "sae.safetensors"))
    for key, value in reference.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)


def test_disk_full_during_sae_training_keeps_the_last_checkpoint(tmp_path, small_disk):
    ws = Workspace(small_disk / "ws")
    activations(ws)
    filled = []

    def fill_after_two_checkpoints(event) -> bool:
        if isinstance(event, Metrics) and event.row.step == 40 and not filled:
            filled.append(fill(small_disk))
        return False

    report = Collector(threading.Event(), fill_after_two_checkpoints)
    with pytest.raises(StageError, match="the disk is full; free some space and resume the run") as error:
        train_sae(SAETrainConfig(**SAE), ws, report, threading.Event())
    assert report.of(Failed)[-1].message == str(error.value)
    run_dir = ws.run_dir("saes", "sae-1")
    assert (
        load_torch_file(run_dir / "trainer.pt")["step"] == 20
    )  # the last checkpoint (step 40 never got written), whole
    filled[0].unlink()
    finished = train_sae(SAETrainConfig(), ws, Collector(), threading.Event(), resume="sae-1")
    assert finished.step == 120 and not finished.stopped
    assert_same_weights(run_dir, reference_sae(tmp_path))


def test_disk_full_while_collecting_keeps_sealed_shards(tmp_path, small_disk):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(images / f"{i:02d}.png")
    cfg = CollectConfig(
        model="demo-1",
        device="cpu",
        split="all",
        shard_images=8,
        batch_size=8,
        name="set",
        data=DataConfig(dataset=str(images)),
    )
    reference_ws = Workspace(tmp_path / "reference")
    make_model_run(reference_ws)
    reference = collect(cfg, reference_ws, Collector(), threading.Event())

    ws = Workspace(small_disk / "ws")
    make_model_run(ws)
    filler = fill(small_disk)
    with open(filler, "r+b") as f:  # leave room for about two shards (a shard's thumbnails are ~300 KB)
        f.truncate(filler.stat().st_size - (700 << 10))
    with pytest.raises(StageError, match="the disk is full"):
        collect(cfg, ws, Collector(), threading.Event())
    sealed = ActivationSet(ws.run_dir("activations", "set"), allow_incomplete=True)
    assert 0 < sealed.n_images < 40 and np.isfinite(sealed.load_all()).all()
    filler.unlink()
    done = collect(cfg, ws, Collector(), threading.Event())
    np.testing.assert_array_equal(ActivationSet(done.run_dir).load_all(), ActivationSet(reference.run_dir).load_all())


def test_a_read_only_workspace_is_one_sentence_and_still_readable(tmp_path, small_disk):
    ws = Workspace(small_disk / "ws")
    activations(ws)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    command = [sys.executable, "-m", "vitsae_tui"]
    trained = subprocess.run(
        [*command, "train-sae", "--activations", "set", "--device", "cpu", "--workspace", str(ws.root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert trained.returncode == 1
    assert (
        "the workspace cannot be written" in trained.stderr
        and "pass --workspace DIR with a writable folder" in trained.stderr
    )
    assert "Traceback" not in trained.stderr
    listed = subprocess.run(
        [*command, "runs", "--workspace", str(ws.root)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0 and "set" in listed.stdout


def test_injected_disk_full_at_a_checkpoint_write(tmp_path, monkeypatch):
    """The same fault without a small file system: the checkpoint write itself fails with ENOSPC."""
    ws = Workspace(tmp_path / "ws")
    activations(ws)
    real_save = sae_run.atomic_torch_save
    calls = []

    def save_until_full(path, obj):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(path, obj)

    monkeypatch.setattr(sae_run, "atomic_torch_save", save_until_full)
    with pytest.raises(StageError, match="the disk is full"):
        train_sae(SAETrainConfig(**SAE), ws, Collector(), threading.Event())
    run_dir = ws.run_dir("saes", "sae-1")
    assert load_torch_file(run_dir / "trainer.pt")["step"] == 40
    assert read_json(run_dir / "status.json")["state"] == "failed"
    monkeypatch.setattr(sae_run, "atomic_torch_save", real_save)
    train_sae(SAETrainConfig(), ws, Collector(), threading.Event(), resume="sae-1")
    assert_same_weights(run_dir, reference_sae(tmp_path))


def test_out_of_memory_suggests_a_smaller_batch_and_keeps_the_state(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    activations(ws)
    real_step = sae_mod.FusedStep.__call__
    steps = []

    def step_until_oom(self, x, *args):
        steps.append(1)
        if len(steps) == 50:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
        return real_step(self, x, *args)

    monkeypatch.setattr(sae_mod.FusedStep, "__call__", step_until_oom)
    report = Collector()
    with pytest.raises(StageError, match="the device ran out of memory; start again with a smaller --batch-size"):
        train_sae(SAETrainConfig(**SAE), ws, report, threading.Event())
    run_dir = ws.run_dir("saes", "sae-1")
    status = read_json(run_dir / "status.json")
    assert status["state"] == "failed" and "smaller --batch-size" in status["message"]
    assert load_torch_file(run_dir / "trainer.pt")["step"] == 40
    monkeypatch.setattr(sae_mod.FusedStep, "__call__", real_step)
    train_sae(SAETrainConfig(), ws, Collector(), threading.Event(), resume="sae-1")
    assert_same_weights(run_dir, reference_sae(tmp_path))


def test_non_finite_activations_are_refused(tmp_path):
    ws = Workspace(tmp_path / "ws")
    acts = np.random.default_rng(0).standard_normal((8, 36, 8)).astype(np.float32)
    acts[3, 5, 2] = np.nan
    write_activation_set(ws, "nan-set", acts)
    acts[3, 5, 2] = np.inf
    write_activation_set(ws, "inf-set", acts)
    for name in ("nan-set", "inf-set"):
        with pytest.raises(StoreError, match="NaN, infinite"):
            ActivationSet(ws.run_dir("activations", name))
        with pytest.raises(StageError, match="NaN, infinite"):
            train_sae(
                SAETrainConfig(activations=name, device="cpu", tokens=512, batch_size=128),
                ws,
                Collector(),
                threading.Event(),
            )
    # a shard changed after collection, its statistics still finite
    shard = ws.run_dir("activations", "nan-set") / "shard-00000.npy"
    manifest_path = shard.parent / "manifest.json"
    manifest = read_json(manifest_path)
    manifest.update(mean=[0.0] * 8, var=[1.0] * 8)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StageError, match="activations/nan-set holds NaN or infinite values"):
        train_sae(
            SAETrainConfig(activations="nan-set", device="cpu", tokens=512, batch_size=128, resident="yes"),
            ws,
            Collector(),
            threading.Event(),
        )
    # a model whose weights went NaN: collection stops at once and stores nothing
    run = make_model_run(ws)
    best = ws.run_dir("models", run) / "best.pt"
    state = load_torch_file(best)
    state["model"] = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, best)
    with pytest.raises(StageError, match="the model produced NaN or infinite activations"):
        collect(CollectConfig(model=run, device="cpu", limit=16), ws, Collector(), threading.Event())
