"""The stages of the pipeline and their registry: one canonical name per stage, from which the CLI's subcommands,
the app's screens and palette entries, the guided run and the tests' stage runner are all built.

Importable without torch: a stage's module is imported only when it runs. Every stage module exposes
`run(cfg, ws, report, stop, ...)`, and stages never import each other.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from vitsae_tui.engine.config import CollectConfig, ImportModelConfig, IndexConfig, SAETrainConfig, TrainModelConfig


@dataclass(frozen=True)
class Stage:
    name: str
    """canonical name: the CLI subcommand, the stage of its events, the app's mode"""
    title: str
    """what the app calls it"""
    noun: str
    """what home's lineage calls its step ("the sae stage")"""
    summary: str
    """one line for --help and the command palette"""
    config: type
    """its config class (frozen dataclass with field docs)"""
    kind: str
    """the workspace folder its runs go to"""
    module: str
    """the module whose run() does it"""
    cli_fields: tuple[str, ...]
    """config fields offered as CLI flags (the rest keep their defaults or the preset's values)"""
    takes_data: bool = False
    """whether the dataset's fields are flags too"""
    resumable: bool = False
    """whether --resume RUN continues a stopped run"""
    presets: bool = False
    """whether --preset picks the starting configuration"""
    required: str = ""
    """the config field a new run cannot do without"""
    positional: str = ""
    """the config field given as the command's plain argument (import-model SPEC)"""
    in_lineage: bool = True
    """a step of the lineage home shows and the guided run builds (import-model is an alternative to train-model)"""

    @property
    def run(self) -> Callable:
        return importlib.import_module(self.module).run


STAGES = (
    Stage(
        "train-model",
        "Train model",
        "model",
        "train the vision classifier",
        TrainModelConfig,
        "models",
        "vitsae_tui.engine.stages.train_model",
        (
            "epochs",
            "batch_size",
            "lr",
            "weight_decay",
            "lr_schedule",
            "seed",
            "device",
            "bf16",
            "checkpoint_every",
            "num_workers",
        ),
        takes_data=True,
        resumable=True,
        presets=True,
    ),
    Stage(
        "import-model",
        "Import model",
        "model",
        "make a model run of a pretrained timm or torchvision model",
        ImportModelConfig,
        "models",
        "vitsae_tui.engine.stages.import_model",
        ("spec", "weights", "name"),
        required="spec",
        positional="spec",
        in_lineage=False,
    ),
    Stage(
        "collect",
        "Collect activations",
        "activations",
        "record a hook point's activations into an activation set",
        CollectConfig,
        "activations",
        "vitsae_tui.engine.stages.collect",
        (
            "model",
            "checkpoint",
            "hook",
            "split",
            "limit",
            "dtype",
            "shard_images",
            "batch_size",
            "device",
            "bf16",
            "name",
        ),
        takes_data=True,
        required="model",
    ),
    Stage(
        "train-sae",
        "Train SAE",
        "sae",
        "train a JumpReLU sparse autoencoder on an activation set",
        SAETrainConfig,
        "saes",
        "vitsae_tui.engine.stages.train_sae",
        tuple(SAETrainConfig.__dataclass_fields__),
        resumable=True,
        required="activations",
    ),
    Stage(
        "index",
        "Build feature index",
        "index",
        "build the feature index of a trained SAE (top examples, densities, concepts)",
        IndexConfig,
        "features",
        "vitsae_tui.engine.stages.index",
        ("sae", "activations", "device"),
        required="sae",
    ),
)
REGISTRY = {stage.name: stage for stage in STAGES}
BY_KIND = {stage.kind: stage for stage in reversed(STAGES)}
"""the stage that builds a kind's runs in the guided run (models: train-model; import-model makes them too)"""
