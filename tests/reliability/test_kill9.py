"""kill -9 at seeded random points of every long stage: nothing that claims to be complete is ever corrupt, and
re-running (with resume) ends equal to an uninterrupted run, having lost at most one checkpoint interval per kill.

The runs are small and checkpoint often, so twenty kills land all over them: before the first checkpoint, mid-step,
mid-write, between a shard's files and its manifest, after the last checkpoint. Each kill waits for a seeded
progress target (then a random fraction of a step), so a chain of kills costs about one run, not one per kill.
"""

import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.reliability import stage_runner
from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.activation_set import ActivationSet, Manifest
from vitsae_tui.engine.config import TrainModelConfig
from vitsae_tui.engine.feature_index import FeatureIndex
from vitsae_tui.engine.models.native import VisionTransformerClassifier
from vitsae_tui.engine.saes.run import load_sae
from vitsae_tui.engine.stages import REGISTRY
from vitsae_tui.engine.workspace import KINDS, Workspace, load_torch_file, read_json, read_jsonl

pytestmark = pytest.mark.slow  # the whole suite runs these; the fast tier leaves them out

KILLS_PER_STAGE = 20
KILLS_PER_SWEEP = 10  # a sweep's resume path is train-sae's, plus SAEs at different steps: fewer kills cover it
LINEAGE = {name: stage for name, stage in REGISTRY.items() if stage.in_lineage}
STAGES = (*LINEAGE, "train-sae-sweep")
"""the stages that resume after a kill (an import is one write: test_kill_9_during_an_import checks it)"""
OUTPUTS = {**{name: stage.kind for name, stage in LINEAGE.items()}, "train-sae-sweep": "saes"}
RUNS = {
    "train-model": ("demo-1",),
    "collect": ("set",),
    "train-sae": ("sae-1",),
    "index": ("sae-1",),
    "train-sae-sweep": ("sae-2", "sae-3"),
}
start = stage_runner.start


def run_to_end(stage: str, root: Path, resume: bool) -> tuple[float, int]:
    """Run a stage uninterrupted; returns the seconds between its first announced progress and its end, and the
    progress it announced last (its length in its own unit)."""
    child, announced = start(stage, root, resume)
    first = None
    while child.is_alive():
        if first is None and announced.value >= 0:
            first = time.perf_counter()
        time.sleep(0.002)
    assert child.exitcode == 0, f"{stage} failed (exit {child.exitcode})"
    return max(0.0, time.perf_counter() - (first or time.perf_counter())), int(announced.value)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Every stage run once without interruption: how long its working part took, and how far it went."""
    root = tmp_path_factory.mktemp("reference")
    return root, {stage: run_to_end(stage, root, False) for stage in STAGES}


def recovered(stage: str, ws: Workspace) -> int:
    """How far a re-run starts: the last checkpoint's step, the images of sealed shards or of the saved index pass;
    a sweep starts at its furthest-behind SAE's checkpoint (0 for one that has none)."""
    if stage == "train-sae-sweep":
        trainers = [ws.kind_dir("saes") / run / "trainer.pt" for run in RUNS[stage]]
        return min(int(load_torch_file(t)["step"]) if t.exists() else 0 for t in trainers)
    run_dir = ws.kind_dir(OUTPUTS[stage]) / RUNS[stage][0]
    if stage == "train-model" and (run_dir / "last.pt").exists():
        return int(load_torch_file(run_dir / "last.pt")["step"])
    if stage == "collect" and (run_dir / "manifest.json").exists():
        return Manifest.load(run_dir).n_images
    if stage == "train-sae" and (run_dir / "trainer.pt").exists():
        return int(load_torch_file(run_dir / "trainer.pt")["step"])
    saved_pass = ws.kind_dir("features") / ".sae-1.pass.pt"
    if stage == "index" and saved_pass.exists():
        return int(load_torch_file(saved_pass)["next_image"])
    if stage == "index" and (run_dir / "index.json").exists():  # done, killed in teardown: the pass file is gone
        return ActivationSet(ws.kind_dir("activations") / "set").n_images
    return 0


def resumable(stage: str, ws: Workspace) -> bool:
    if stage == "train-sae-sweep":  # a sweep resumes once it is recorded, whatever its SAEs' checkpoints
        return (ws.root / "sweeps" / "sweep-1.json").exists()
    run_dir = ws.kind_dir(OUTPUTS[stage]) / RUNS[stage][0]
    return {"train-model": (run_dir / "last.pt").exists(), "train-sae": (run_dir / "trainer.pt").exists()}.get(
        stage, True
    )


def assert_nothing_complete_is_corrupt(ws: Workspace) -> None:
    """Every artifact a reader would trust (checkpoints, manifests, SAEs, indexes, status and metrics) loads whole."""
    for kind in KINDS:
        for path in ws.kind_dir(kind).iterdir():
            if path.is_dir() and not path.name.startswith(".") and (path / "status.json").exists():
                assert isinstance(read_json(path / "status.json"), dict)
                read_jsonl(path / "metrics.jsonl")
    for run in ws.runs("models"):
        cfg = config_mod.from_dict(TrainModelConfig, read_json(run.path / "config.json"))
        for name in ("best.pt", "last.pt"):
            if (run.path / name).exists():
                VisionTransformerClassifier(cfg.model).load_state_dict(load_torch_file(run.path / name)["model"])
    for run in ws.runs("activations"):
        if (run.path / "manifest.json").exists():
            store = ActivationSet(run.path, allow_incomplete=True)  # its sealed shards must read whole
            assert np.isfinite(store.load_all()).all() and len(store.load_all()) == store.n_tokens
            assert all(store.thumbnail(i).shape[-1] == 3 for i in range(store.n_images))
    for run in ws.runs("saes"):
        if (run.path / "trainer.pt").exists():
            load_torch_file(run.path / "trainer.pt")
        if (run.path / "sae.safetensors").exists():
            load_sae(run.path)
    for run in ws.runs("features"):
        if (run.path / "index.json").exists():
            FeatureIndex(ws, run.name)


def assert_equal_to_reference(stage: str, ours: Path, theirs: Path) -> None:
    if stage == "train-model":
        for name in ("last.pt", "best.pt"):
            a, b = load_torch_file(ours / "models/demo-1" / name), load_torch_file(theirs / "models/demo-1" / name)
            for key, value in b["model"].items():
                torch.testing.assert_close(a["model"][key], value, rtol=0, atol=0, msg=f"{name}: {key}")
    elif stage == "collect":
        a, b = ActivationSet(ours / "activations/set"), ActivationSet(theirs / "activations/set")
        np.testing.assert_array_equal(a.load_all(), b.load_all())
        assert a.manifest.images == b.manifest.images and a.manifest.complete
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
    elif stage in ("train-sae", "train-sae-sweep"):
        for run in RUNS[stage]:
            a, b = (
                load_file(str(ours / "saes" / run / "sae.safetensors")),
                load_file(str(theirs / "saes" / run / "sae.safetensors")),
            )
            for key, value in b.items():
                torch.testing.assert_close(a[key], value, rtol=0, atol=0, msg=f"{run}: {key}")
    else:
        for key in ("density", "top_values", "top_tokens", "class_counts", "band_tokens", "class_effect"):
            np.testing.assert_array_equal(
                np.load(ours / "features/sae-1" / f"{key}.npy"),
                np.load(theirs / "features/sae-1" / f"{key}.npy"),
                err_msg=key,
            )


def remove_outputs(root: Path, stage: str) -> None:
    for run in RUNS[stage]:
        shutil.rmtree(root / OUTPUTS[stage] / run, ignore_errors=True)
    if stage == "train-sae-sweep":
        shutil.rmtree(root / "sweeps", ignore_errors=True)


@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_at_random_points(stage, reference, tmp_path):
    reference_root, measured = reference
    work_seconds, length = measured[stage]
    root = tmp_path / "ws"
    shutil.copytree(reference_root, root)  # the stage's inputs, as the reference had them
    for later in STAGES[STAGES.index(stage) :]:
        remove_outputs(root, later)
    ws = Workspace(root)
    rng = random.Random(f"kill-9 {stage}")
    interval = stage_runner.CHECKPOINT_INTERVAL[stage]
    kills = KILLS_PER_SWEEP if stage == "train-sae-sweep" else KILLS_PER_STAGE
    # the kill points, in order along the run: each kill's resumed run goes on to the next one
    targets = sorted(rng.randrange(length) for _ in range(kills))
    step_seconds = work_seconds / max(length, 1)
    losses, completed_early, resume = [], 0, False
    while len(losses) < kills:
        child, announced = start(stage, root, resume)
        while announced.value < targets[len(losses)] and child.is_alive():
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, step_seconds))  # anywhere inside the step: mid-compute or mid-write
        progress = announced.value
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
        child.join()
        if child.exitcode == 0:  # its last step ended before the kill: start over to place the remaining kills
            completed_early += 1
            remove_outputs(root, stage)
            resume = False
            continue
        assert child.exitcode == -signal.SIGKILL
        assert_nothing_complete_is_corrupt(ws)
        lost = max(0, progress - recovered(stage, ws))
        losses.append(lost)
        assert lost <= interval, f"kill {len(losses)} lost {lost} {stage_runner.UNIT[stage]} (interval {interval})"
        resume = resumable(stage, ws)
        if not resume:  # killed before the first checkpoint: the run has nothing to resume from, so start it again
            remove_outputs(root, stage)
    run_to_end(stage, root, resume)
    assert_nothing_complete_is_corrupt(ws)
    assert_equal_to_reference(stage, root, reference_root)
    leftovers = [p.name for p in (root / OUTPUTS[stage]).rglob(".*") if p.name.endswith((".tmp", ".pass.pt"))]
    assert not leftovers, leftovers
    print(
        f"\n{stage}: {len(losses)} kills (+{completed_early} runs that ended first), lost per kill: max {max(losses)} "
        f"mean {np.mean(losses):.1f} {stage_runner.UNIT[stage]} (checkpoint interval {interval}); leftovers {leftovers}"
    )


def test_kill_9_during_an_import_leaves_nothing_that_looks_whole(tmp_path):
    """An import killed anywhere leaves a folder the lineage never follows and no run marked finished that is not;
    the next import succeeds."""
    import timm
    from safetensors.torch import save_file

    from vitsae_tui.engine import model_run
    from vitsae_tui.engine.pipeline import lineage

    torch.manual_seed(0)
    save_file(timm.create_model("vit_tiny_patch16_224", depth=2).state_dict(), str(tmp_path / "vit.safetensors"))
    started = time.perf_counter()
    run_to_end("import-model", tmp_path, False)
    whole_s = time.perf_counter() - started
    shutil.rmtree(tmp_path / "models")
    rng = random.Random("kill-9 import-model")
    for _ in range(8):
        child, _announced = start("import-model", tmp_path, False)
        time.sleep(rng.uniform(0.0, whole_s))
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
        child.join()
        ws = Workspace(tmp_path)
        for run in ws.runs("models"):
            if run.state == "finished":
                assert model_run.load_model(ws, run.name).model is not None
            else:
                assert lineage(ws)[0].run != run.name, "a half-written import is never followed"
            shutil.rmtree(run.path)  # as a user would, to import under the same name again
    run_to_end("import-model", tmp_path, False)
    ws = Workspace(tmp_path)
    assert [r.state for r in ws.runs("models")] == ["finished"]
    assert lineage(ws)[0].run == "imported"
