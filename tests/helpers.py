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
