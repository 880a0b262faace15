"""Shared helpers for the tests: tiny configs, a report collector, untrained model runs, a Pilot wait."""

import asyncio
import dataclasses

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
    from vitsae_tui.engine.synthetic import CLASS_NAMES, CONCEPTS
    from vitsae_tui.engine.vision_model import VisionTransformerClassifier
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


def write_activation_set(
    ws: Workspace, name: str, acts, labels=None, hook: str = "blocks.0.resid_post", model_run: str = "none"
) -> str:
    """An activation set built from an array (n_images, tokens, d): the store's own format, one shard."""
    import numpy as np

    from vitsae_tui.engine.activation_store import MANIFEST_VERSION
    from vitsae_tui.engine.activations import THUMB_SIZE
    from vitsae_tui.engine.workspace import atomic_save_npy, atomic_write_json, write_status

    n_images, tokens, d = acts.shape
    labels = np.zeros(n_images, dtype=np.int64) if labels is None else labels
    set_dir = ws.kind_dir("activations") / name
    set_dir.mkdir()
    rows = acts.reshape(-1, d).astype(np.float32)
    atomic_save_npy(set_dir / "shard-00000.npy", rows)
    atomic_save_npy(set_dir / "shard-00000.thumbs.npy", np.zeros((n_images, THUMB_SIZE, THUMB_SIZE, 3), np.uint8))
    as64 = rows.astype(np.float64)
    atomic_write_json(
        set_dir / "manifest.json",
        {
            "version": MANIFEST_VERSION,
            "name": name,
            "hook": hook,
            "d_model": d,
            "grid": [6, 6],
            "tokens_per_image": tokens,
            "dtype": "float32",
            "thumb_size": THUMB_SIZE,
            "class_names": [],
            "concept_names": [],
            "provenance": {"model_run": model_run, "checkpoint": "best", "checkpoint_sha256": "0" * 64, "hook": hook},
            "n_images_planned": n_images,
            "n_images": n_images,
            "n_tokens": n_images * tokens,
            "skipped_images": 0,
            "shards": [
                {
                    "files": {"acts": "shard-00000.npy", "thumbs": "shard-00000.thumbs.npy"},
                    "rows": [0, n_images * tokens],
                    "images": [0, n_images],
                    "selected_end": n_images,
                    "skipped": 0,
                    "sum": as64.sum(0).tolist(),
                    "sumsq": (as64**2).sum(0).tolist(),
                }
            ],
            "images": [{"source": f"array:{i}", "label": int(labels[i]), "index": i} for i in range(n_images)],
            "mean": as64.mean(0).tolist(),
            "var": as64.var(0).tolist(),
            "complete": True,
        },
    )
    write_status(set_dir, "finished")
    return name


def make_indexed_workspace(root) -> tuple[Workspace, str]:
    """model (random weights) -> 96 collected synthetic images -> an SAE (seeded init, no training) -> its index."""
    import threading

    from vitsae_tui.engine.activation_store import ActivationStore
    from vitsae_tui.engine.activations import collect
    from vitsae_tui.engine.config import CollectConfig
    from vitsae_tui.engine.events import ignore
    from vitsae_tui.engine.features import build_index
    from vitsae_tui.engine.sae import JumpReLUSAE
    from vitsae_tui.engine.train_sae import input_scale, save_sae
    from vitsae_tui.engine.workspace import atomic_write_json, write_status

    ws = Workspace(root)
    run = make_model_run(ws)
    set_dir = collect(CollectConfig(model=run, device="cpu", shard_images=40), ws, ignore, threading.Event()).set_dir
    store = ActivationStore(set_dir)
    sae = JumpReLUSAE(store.d_model, 4 * store.d_model, theta_init=0.5, input_scale=input_scale(store), seed=3)
    sae_dir = ws.new_run("saes", "sae")
    save_sae(sae_dir / "sae.safetensors", sae)
    atomic_write_json(
        sae_dir / "meta.json",
        {
            "activations": set_dir.name,
            "hook": store.hook,
            "d_in": store.d_model,
            "d_sae": sae.d_sae,
            "input_scale": float(sae.input_scale),
            "model_run": run,
        },
    )
    write_status(sae_dir, "finished")
    build_index(ws, sae_dir.name, ignore, threading.Event(), device="cpu")
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
