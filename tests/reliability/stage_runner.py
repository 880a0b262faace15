"""Stages as the fault-injection tests run them: small configs, in a child process the test may kill at any point.

Children are forked from a forkserver that has imported torch and the engine once, so a kill-and-resume chain of
twenty processes costs seconds, not a torch import each.
"""

import dataclasses
import importlib
import multiprocessing
import threading
from pathlib import Path

import torch._dynamo  # noqa: F401  the first optimizer imports it (1.4 s): once in the forkserver, not per child

import vitsae_tui.engine.models.timm_models  # noqa: F401  timm (for import-model) once in the forkserver too
from tests.helpers import tiny_train_config
from vitsae_tui.engine.config import (
    CollectConfig,
    DataConfig,
    ImportModelConfig,
    IndexConfig,
    SAETrainConfig,
    sweep_configs,
)
from vitsae_tui.engine.events import Metrics, Progress
from vitsae_tui.engine.stages import REGISTRY
from vitsae_tui.engine.workspace import Workspace

DATA = DataConfig(n_train=480, n_val=32)
MODEL = tiny_train_config(epochs=4, data=dataclasses.replace(DATA, n_train=160), checkpoint_every=3)
COLLECT = CollectConfig(model="demo-1", device="cpu", shard_images=24, batch_size=16, data=DATA, name="set")
SAE = SAETrainConfig(
    activations="set",
    batch_size=256,
    tokens=256 * 1500,
    expansion=4,
    device="cpu",
    log_every=5,
    eval_every=500,
    checkpoint_every=50,
    lr=1e-3,
)
# images per step of the index pass, which here checkpoints after every step
INDEX = IndexConfig(sae="sae-1", device="cpu", checkpoint_every_s=0.0, images_per_batch=16)
SWEEP = sweep_configs(SAE, arch=("jumprelu", "topk"), k=(8,))
"""a sweep (the pseudo-stage train-sae-sweep): two SAEs in one pass, after the others in the same workspace"""
IMPORT_WEIGHTS = "vit.safetensors"
"""the weights file import-model reads, in the workspace's folder (the test writes it)"""
IMPORT = ImportModelConfig(spec="timm:vit_tiny_patch16_224", name="imported")
CONFIGS = {
    "train-model": MODEL,
    "import-model": IMPORT,
    "collect": COLLECT,
    "train-sae": SAE,
    "index": INDEX,
    "train-sae-sweep": SWEEP,
}
RESUME = {"train-model": "demo-1", "train-sae": "sae-1", "train-sae-sweep": "sweep-1"}
"""the run a resumed stage continues (collect and index continue on their own)"""
CHECKPOINT_INTERVAL = {
    "train-model": MODEL.checkpoint_every,
    "collect": COLLECT.shard_images,
    "train-sae": SAE.checkpoint_every,
    "index": INDEX.images_per_batch,
    "train-sae-sweep": SAE.checkpoint_every,
}
UNIT = {
    "train-model": "steps",
    "import-model": "steps",
    "collect": "images",
    "train-sae": "steps",
    "index": "images",
    "train-sae-sweep": "steps",
}
# imported once, in the forkserver
STAGE_FUNCTIONS = {
    **{name: stage.run for name, stage in REGISTRY.items()},
    "train-sae-sweep": importlib.import_module("vitsae_tui.engine.stages.train_sae").run_sweep,
}


class ProgressMirror:
    """A report that publishes the furthest step or image count the stage has announced, for the parent to read
    (in the stage's own unit: drawing the synthetic data reports "images drawn" first)."""

    def __init__(self, shared, unit: str):
        self.shared, self.unit = shared, unit

    def __call__(self, event) -> None:
        done = None
        if isinstance(event, Progress) and event.unit == self.unit:
            done = event.done
        elif isinstance(event, Metrics):
            done = event.row.step
        if done is not None and done > self.shared.value:
            self.shared.value = done


def run(stage: str, root: str, resume: bool, shared) -> None:
    ws, report, stop = Workspace(root), ProgressMirror(shared, UNIT[stage]), threading.Event()
    extra = {"resume": RESUME[stage] if resume else None} if stage in RESUME else {}
    cfg = CONFIGS[stage]
    if stage == "import-model":
        cfg = dataclasses.replace(cfg, weights=str(Path(root) / IMPORT_WEIGHTS))
    STAGE_FUNCTIONS[stage](cfg, ws, report, stop, **extra)


FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(["tests.reliability.stage_runner"])


def start(stage: str, root: Path, resume: bool):
    """A stage in a child process; returns it and the shared counter of its announced progress (keep both alive)."""
    announced = FORKSERVER.Value("q", -1)
    child = FORKSERVER.Process(target=run, args=(stage, str(root), resume, announced), daemon=True)
    child.start()
    return child, announced
