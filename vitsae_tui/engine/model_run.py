"""A model run (`models/<run>/`): config.json, dataset.json, last.pt and best.pt, and loading a trained model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.config import DataConfig, TrainModelConfig
from vitsae_tui.engine.models import imported
from vitsae_tui.engine.text import shown
from vitsae_tui.engine.workspace import (
    Workspace,
    WorkspaceError,
    atomic_torch_save,
    atomic_write_json,
    file_sha256,
    load_torch_file,
    read_json,
)

if TYPE_CHECKING:  # torch loads only when a model does: home and --help read runs without it
    import torch

    from vitsae_tui.engine.models.base import HookedModel

CHECKPOINTS = ("best", "last")


def read_config(ws: Workspace, run: str) -> TrainModelConfig:
    return config_mod.from_dict(
        TrainModelConfig, read_json(ws.run_dir("models", run) / "config.json"), f"{run}/config.json"
    )


def write_config(run_dir: Path, cfg: TrainModelConfig, n_classes: int | None = None) -> None:
    """The run's config; once the dataset is known, with the head's class count filled in."""
    values = config_mod.to_dict(cfg)
    if n_classes is not None:
        values["model"] = {**config_mod.to_dict(cfg.model), "n_classes": n_classes}
    atomic_write_json(run_dir / "config.json", values)


@dataclass(frozen=True)
class DatasetInfo:
    """dataset.json: what the model was trained on."""

    class_names: tuple[str, ...] = ()
    """the classes its logits predict, in order"""
    concept_names: tuple[str, ...] = ()
    n_train: int = 0
    n_val: int = 0

    @classmethod
    def load(cls, run_dir: Path) -> DatasetInfo:
        """The run's validated dataset.json (empty when a run predates it); WorkspaceError naming the problem."""
        path = run_dir / "dataset.json"
        if not path.exists():
            return cls()
        try:
            return config_mod.from_dict(cls, read_json(path), f"models/{run_dir.name}/dataset.json")
        except config_mod.ConfigError as e:
            raise WorkspaceError(f"{e}; restore the file or train the model again") from None


def write_dataset_info(
    run_dir: Path, class_names: list[str], concept_names: list[str], n_train: int, n_val: int
) -> None:
    info = DatasetInfo(tuple(class_names), tuple(concept_names), n_train, n_val)
    atomic_write_json(run_dir / "dataset.json", config_mod.to_dict(info))


def load_checkpoint_path(run_dir: Path) -> Path:
    """last.pt's path, which a resume needs; WorkspaceError when the run never saved one."""
    path = checkpoint_path(run_dir, "last")
    if not path.exists():
        raise WorkspaceError(f"no checkpoint in models/{run_dir.name}; start a new run instead of resuming")
    return path


def load_checkpoint(run_dir: Path) -> dict:
    """last.pt: weights, optimizer, position in training (epoch, batch, step), best validation, torch RNG."""
    return load_torch_file(load_checkpoint_path(run_dir))


def torch_rng_state():
    import torch

    return torch.get_rng_state()


def save_best(path: Path, model, validation: dict) -> None:
    """best.pt: the weights and the validation row (step, epoch, loss, accuracy) that made them the best."""
    atomic_torch_save(path, {"model": model.state_dict(), **validation})


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    return run_dir / f"{checkpoint}.pt"


def save_checkpoint(path: Path, model, optimizer, epoch: int, batch_in_epoch: int, step: int, best: dict) -> None:
    """`best` holds best_val_loss and best_val_accuracy."""
    atomic_torch_save(
        path,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "step": step,
            **best,
            "torch_rng": torch_rng_state(),
        },
    )


def describe_architecture(model_cfg) -> str:
    return f"{model_cfg.n_layer} blocks of width {model_cfg.n_embd}"


def describe_weights(state) -> str:
    """What a checkpoint's tensors say about the model they came from, for a mismatch message."""
    weights = state.get("model") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        return "no model weights"
    blocks = {key.split(".")[1] for key in weights if isinstance(key, str) and key.startswith("blocks.")}
    width = weights.get("blocks.0.ln_1.weight")
    return f"{len(blocks)} blocks of width {width.shape[0] if hasattr(width, 'shape') else '?'}"


@dataclass(frozen=True)
class LoadedModel:
    model: HookedModel
    """our own classifier or an imported library model, behind the same hook protocol"""
    checkpoint_path: Path
    checkpoint_sha256: str
    class_names: tuple[str, ...]
    data: DataConfig | None
    """what the model was trained on (None: an imported model, trained on nothing of ours)"""
    label: str
    """its preset, or the spec it was imported from"""
    default_hook: str
    has_head: bool = True
    """False for a headless backbone loaded without a probe: its outputs are pooled features, not logits"""


def model_data(ws: Workspace, run: str) -> DataConfig | None:
    """The data a model run was trained on; None for an imported model (its followers name theirs)."""
    if imported.is_imported(ws.run_dir("models", run)):
        return None
    return read_config(ws, run).data


def hook_choices(ws: Workspace, run: str) -> tuple[list[str], str]:
    """A model run's hook points and its default one, without building the model."""
    run_dir = ws.run_dir("models", run)
    if imported.is_imported(run_dir):
        record = imported.read_record(run_dir)
        return list(record.hooks), record.default_hook
    from vitsae_tui.engine.models.native import default_hook, hook_names

    cfg = read_config(ws, run)
    return hook_names(cfg.model), default_hook(cfg.model)


def _checkpoint(run_dir: Path, checkpoint: str) -> Path:
    if checkpoint not in ("best", "last"):
        raise WorkspaceError(f"checkpoint {checkpoint!r} is not 'best' or 'last'")
    path = run_dir / f"{checkpoint}.pt"
    if not path.exists():
        raise WorkspaceError(
            f"no {checkpoint} checkpoint in models/{run_dir.name}; train the model first or pick another run"
        )
    return path


def load_model(
    ws: Workspace,
    run: str,
    checkpoint: str = "best",
    device: str | torch.device = "cpu",
    classes_of: DataConfig | None = None,
) -> LoadedModel:
    """A trained or imported model in eval mode, from its `best` or `last` checkpoint, with the checkpoint's hash.

    `classes_of`: the data whose classes its logits must predict; a headless backbone then gets the linear probe a
    set of that data was given (WorkspaceError when none was), and without it returns pooled features."""
    from vitsae_tui.engine.device import pick_device

    run_dir = ws.run_dir("models", run)
    device = pick_device(device) if isinstance(device, str) else device
    if imported.is_imported(run_dir):
        return _load_imported(ws, run_dir, checkpoint, device, classes_of)
    cfg = config_mod.from_dict(TrainModelConfig, read_json(run_dir / "config.json"), f"{run}/config.json")
    path = _checkpoint(run_dir, checkpoint)
    state = load_torch_file(path)
    from vitsae_tui.engine.models.native import VisionTransformerClassifier, default_hook

    model = VisionTransformerClassifier(cfg.model)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, TypeError, AttributeError):
        raise WorkspaceError(
            f"models/{run}/{checkpoint}.pt holds {describe_weights(state)}, but its config.json describes "
            f"{describe_architecture(cfg.model)} ({cfg.preset} preset); train it again or restore the matching "
            f"config"
        ) from None
    class_names = DatasetInfo.load(run_dir).class_names
    if class_names and len(class_names) != cfg.model.n_classes:
        raise WorkspaceError(
            f"models/{run}/dataset.json names {len(class_names)} classes but the model predicts "
            f"{cfg.model.n_classes}; restore the file or train the model again"
        )
    model.to(device).eval()
    return LoadedModel(model, path, file_sha256(path), class_names, cfg.data, cfg.preset, default_hook(cfg.model))


def _load_imported(ws: Workspace, run_dir: Path, checkpoint: str, device, classes_of: DataConfig | None) -> LoadedModel:
    record = imported.read_record(run_dir)
    path = _checkpoint(run_dir, checkpoint)
    state = load_torch_file(path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise WorkspaceError(f"models/{run_dir.name}/{checkpoint}.pt holds no model weights; import the model again")
    _, model = imported.build(record, state["model"])
    class_names, sha256 = DatasetInfo.load(run_dir).class_names, file_sha256(path)
    if record.n_classes == 0 and classes_of is not None:
        from vitsae_tui.engine.activation_set.probe import find_probe
        from vitsae_tui.engine.models.probe import as_module

        probe = find_probe(ws, run_dir.name, sha256, classes_of)
        if probe is None:
            raise WorkspaceError(
                f"models/{run_dir.name} has no classification head and no labelled set of {classes_of.label} "
                f"collected from it gave it a linear probe; collect a labelled train split to get class logits"
            )
        model.probe, class_names = as_module(probe[0], probe[1]), probe[2].class_names
    model.to(device).eval()
    has_head = record.n_classes > 0 or model.probe is not None
    return LoadedModel(model, path, sha256, class_names, None, record.spec, record.default_hook, has_head)


def label_space_mismatch(model_classes: tuple[str, ...], set_classes: tuple[str, ...] | list[str]) -> str:
    """Why a set's labels cannot be read as the model's classes ("" when they can): accuracy, cross-entropy and
    class effects need both to number the same classes the same way."""
    model_classes, set_classes = tuple(model_classes), tuple(set_classes)
    if not model_classes or not set_classes or model_classes == set_classes:
        return ""
    model_names, set_names = (shown(", ".join(names[:3]), 60) for names in (model_classes, set_classes))
    return (
        f"the model predicts {len(model_classes)} classes ({model_names}, …) but the set is labelled with "
        f"{len(set_classes)} others ({set_names}, …)"
    )
