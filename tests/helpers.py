"""Shared helpers for the tests: tiny configs, a report collector, untrained model runs, a Pilot wait."""

import asyncio
import dataclasses
from pathlib import Path

from vitsae_tui.engine.config import DataConfig, ModelConfig, TrainModelConfig
from vitsae_tui.engine.workspace import Workspace

TINY_MODEL = ModelConfig(conv_channels=(8, 16, 16, 16, 16), n_layer=2, n_head=2, dropout=0.1)


def tiny_train_config(**overrides) -> TrainModelConfig:
    base = TrainModelConfig(
        preset="demo",
        data=DataConfig(n_train=96, n_val=32),
        model=TINY_MODEL,
        epochs=2,
        batch_size=16,
        lr=3e-3,
        checkpoint_every=1000,
        device="cpu",
    )
    return dataclasses.replace(base, **overrides)


class Collector:
    """A report callable that keeps every event, optionally setting `stop` after some condition."""

    def __init__(self, stop=None, stop_when=None):
        self.events = []
        self.stop, self.stop_when = stop, stop_when

    def __call__(self, event):
        self.events.append(event)
        if self.stop is not None and self.stop_when is not None and self.stop_when(event):
            self.stop.set()

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


def make_model_run(ws: Workspace, cfg: TrainModelConfig | None = None, seed: int = 0) -> str:
    """A model run with random weights (no training), for stages whose correctness does not depend on them."""
    import torch

    from vitsae_tui.engine import config as config_mod
    from vitsae_tui.engine.models.native import VisionTransformerClassifier
    from vitsae_tui.engine.synthetic import CLASS_NAMES, CONCEPTS
    from vitsae_tui.engine.workspace import atomic_torch_save, atomic_write_json, write_status

    cfg = cfg or tiny_train_config()
    torch.manual_seed(seed)
    run_dir = ws.new_run("models", cfg.preset)
    atomic_write_json(run_dir / "config.json", config_mod.to_dict(cfg))
    atomic_write_json(run_dir / "dataset.json", {"class_names": list(CLASS_NAMES), "concept_names": list(CONCEPTS)})
    atomic_torch_save(run_dir / "best.pt", {"model": VisionTransformerClassifier(cfg.model).state_dict()})
    atomic_torch_save(run_dir / "last.pt", {"model": VisionTransformerClassifier(cfg.model).state_dict()})
    write_status(run_dir, "finished")
    return run_dir.name


async def wait_for(pilot, condition, timeout_s=180.0):
    """Let the app run until condition() holds (screen markers, not fixed sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "timed out waiting for the app"
        await pilot.pause(0.1)


async def open_browser(pilot, app):
    """Press b and wait until the browser has opened its index; returns the browser screen."""
    await pilot.press("b")
    await wait_for(pilot, lambda: app.screen.index is not None, timeout_s=30)
    return app.screen


def write_activation_set(
    ws: Workspace,
    name: str,
    acts,
    labels=None,
    hook: str = "blocks.0.resid_post",
    model_run: str = "none",
    split: str = "train",
) -> str:
    """An activation set built from an array (n_images, 36, d), written by the set's own writer as one shard."""
    import dataclasses

    import numpy as np
    import torch

    from vitsae_tui.engine import activation_set
    from vitsae_tui.engine.activation_set import ImageEntry, Provenance, ShardWriter
    from vitsae_tui.engine.config import DataConfig
    from vitsae_tui.engine.workspace import write_status

    n_images, tokens, d = acts.shape
    labels = np.zeros(n_images, dtype=np.int64) if labels is None else labels
    set_dir = ws.kind_dir("activations") / name
    provenance = Provenance(
        model_run=model_run,
        checkpoint="best",
        checkpoint_sha256="0" * 64,
        hook=hook,
        data=DataConfig(),
        split=split,
        limit=0,
        dtype="float32",
        shard_images=n_images,
    )
    manifest = activation_set.open_or_create(set_dir, provenance, "none", d, (int(tokens**0.5),) * 2, [])
    writer = ShardWriter(set_dir, manifest)
    writer.open(0, n_images)
    entries = [ImageEntry(source=f"array:{i}", label=int(labels[i]), index=i) for i in range(n_images)]
    writer.write(acts.astype(np.float32), torch.zeros(n_images, 3, 224, 224, dtype=torch.uint8), entries, None)
    writer.seal(n_images, 0)
    writer.close()
    # sealed as collect seals a set, but without loading it back: tests also write sets that must be refused
    dataclasses.replace(writer.manifest, complete=True).dump(set_dir)
    write_status(set_dir, "finished")
    return name


_indexed_templates: dict[tuple, tuple[Path, str]] = {}


def make_indexed_workspace(root, plant=None, arch: str = "jumprelu") -> tuple[Workspace, str]:
    """model (random weights) -> 96 collected synthetic images -> an SAE (seeded init, no training) -> its index.

    `plant(sae, store, model_run_name, ws)`, when given, changes the SAE's weights before it is saved and indexed;
    `arch` topk or batchtopk makes a TopK SAE (k 8) or a BatchTopK one (its global threshold as JumpReLU's θ).
    Built once per test session for each (plant, arch), then copied: the build is deterministic.
    """
    import atexit
    import shutil
    import tempfile

    key = (plant, arch)
    if key not in _indexed_templates:
        template = Path(tempfile.mkdtemp(prefix="vitsae-indexed-")) / "ws"
        atexit.register(shutil.rmtree, template.parent, ignore_errors=True)
        _indexed_templates[key] = (template, build_indexed_workspace(template, plant, arch)[1])
    template, sae = _indexed_templates[key]
    shutil.copytree(template, root)
    return Workspace(root), sae


def build_indexed_workspace(root, plant=None, arch: str = "jumprelu") -> tuple[Workspace, str]:
    import threading

    from vitsae_tui.engine.activation_set import ActivationSet
    from vitsae_tui.engine.config import CollectConfig, IndexConfig
    from vitsae_tui.engine.events import ignore
    from vitsae_tui.engine.saes.jumprelu import JumpReLUSAE
    from vitsae_tui.engine.saes.run import SAEMeta, save_sae
    from vitsae_tui.engine.stages.collect import run as collect
    from vitsae_tui.engine.stages.index import run as build_index
    from vitsae_tui.engine.stages.train_sae import input_scale
    from vitsae_tui.engine.workspace import write_status

    ws = Workspace(root)
    run = make_model_run(ws)
    set_dir = collect(CollectConfig(model=run, device="cpu", shard_images=40), ws, ignore, threading.Event()).run_dir
    store = ActivationSet(set_dir)
    # inputs at unit mean squared norm put z ~ N(0, 1/d): this threshold lets about a third of the features fire
    theta = 0.5 / store.d_model**0.5
    sae = JumpReLUSAE(store.d_model, 4 * store.d_model, theta_init=theta, input_scale=input_scale(store), seed=3)
    if arch != "jumprelu":
        from vitsae_tui.engine.saes.batchtopk import BatchTopKSAE
        from vitsae_tui.engine.saes.topk import TopKSAE

        sae = {"topk": TopKSAE, "batchtopk": BatchTopKSAE}[arch](
            store.d_model, 4 * store.d_model, k=8, input_scale=input_scale(store), seed=3
        )
        sae.threshold.fill_(theta)
    if plant is not None:
        plant(sae, store, run, ws)
    sae_dir = ws.new_run("saes", "sae")
    save_sae(sae_dir / "sae.safetensors", sae)
    SAEMeta(
        activations=set_dir.name,
        hook=store.hook,
        d_in=store.d_model,
        d_sae=sae.d_sae,
        input_scale=float(sae.input_scale),
        model_run=run,
        model_checkpoint_sha256=store.provenance.checkpoint_sha256,
        architecture=arch,
    ).dump(sae_dir)
    write_status(sae_dir, "finished")
    build_index(IndexConfig(sae=sae_dir.name, device="cpu"), ws, ignore, threading.Event())
    return ws, sae_dir.name


async def answer(pilot, key, *typed):
    """Press a key that opens a prompt, type the answer and submit it."""
    await pilot.press(key)
    await pilot.pause(0.1)
    await pilot.press(*typed, "enter")
    await pilot.pause(0.2)


async def start_small_training(pilot, app, epochs: int) -> None:
    """From home: the Train screen with a small CPU run of `epochs` epochs, started and reporting steps."""
    from textual.widgets import Input, Select

    await pilot.press("t")
    screen = app.screen
    for key, value in (("n_train", "64"), ("epochs", str(epochs)), ("batch_size", "16")):
        screen.query_one(f"#{key}", Input).value = value
    screen.query_one("#device", Select).value = "cpu"
    screen.query_one("#log").focus()
    await pilot.press("s")
    await wait_for(
        pilot, lambda: (job := app.jobs.get("train-model")) and job.progress and job.progress.unit == "steps"
    )
