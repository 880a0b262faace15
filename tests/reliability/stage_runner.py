"""Stages as the fault-injection tests run them: small configs, in a child process the test may kill at any point.

Children are forked from a forkserver that has imported torch and the engine once, so a kill-and-resume chain of
twenty processes costs seconds, not a torch import each.
"""

import dataclasses
import threading

import torch._dynamo  # noqa: F401  the first optimizer imports it (1.4 s): once in the forkserver, not per child

from tests.helpers import tiny_train_config
from vitsae_tui.engine.activations import collect
from vitsae_tui.engine.config import CollectConfig, DataConfig, SAETrainConfig
from vitsae_tui.engine.events import Metrics, Progress
from vitsae_tui.engine.features import build_index
from vitsae_tui.engine.train_model import train_model
from vitsae_tui.engine.train_sae import train_sae
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
INDEX_BATCH = 16  # images per step of the index pass, which here checkpoints after every step
CHECKPOINT_INTERVAL = {
    "model": MODEL.checkpoint_every,
    "collect": COLLECT.shard_images,
    "sae": SAE.checkpoint_every,
    "index": INDEX_BATCH,
}
UNIT = {"model": "steps", "collect": "images", "sae": "steps", "index": "images"}


class ProgressMirror:
    """A report that publishes the furthest step or image count the stage has announced, for the parent to read
    (in the stage's own unit: drawing the synthetic data reports "images drawn" first)."""

    def __init__(self, shared, unit: str):
        self.shared, self.unit = shared, unit

    def __call__(self, event) -> None:
        done = None
        if isinstance(event, Progress) and event.unit == self.unit:
            done = event.done
        elif isinstance(event, Metrics) and isinstance(event.row.get("step"), int):
            done = event.row["step"]
        if done is not None and done > self.shared.value:
            self.shared.value = done


def run(stage: str, root: str, resume: bool, shared) -> None:
    ws, report, stop = Workspace(root), ProgressMirror(shared, UNIT[stage]), threading.Event()
    if stage == "model":
        train_model(MODEL, ws, report, stop, resume="demo-1" if resume else None)
    elif stage == "collect":
        collect(COLLECT, ws, report, stop)
    elif stage == "sae":
        train_sae(SAE, ws, report, stop, resume="sae-1" if resume else None)
    elif stage == "index":
        build_index(ws, "sae-1", report, stop, device="cpu", checkpoint_every_s=0.0, images_per_batch=INDEX_BATCH)
    else:
        raise ValueError(stage)
