"""Stage import-model: a library's vision model (timm, torchvision) as a model run, from a weights file or the
library's own download; every later stage then reads it like a model we trained."""

from __future__ import annotations

import dataclasses
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine import metrics, model_run
from vitsae_tui.engine.config import ImportModelConfig
from vitsae_tui.engine.events import Report
from vitsae_tui.engine.models import imported
from vitsae_tui.engine.models.imported import ImportRecord, ModelImportError
from vitsae_tui.engine.stages.run import StageResult, recording
from vitsae_tui.engine.workspace import (
    RUN_NAME,
    Workspace,
    atomic_torch_save,
    atomic_write_json,
    file_sha256,
)

STAGE = "import-model"
MAX_WEIGHTS_BYTES = 8 << 30


@dataclass(frozen=True)
class ImportModelResult(StageResult):
    spec: str
    hooks: tuple[str, ...]


def load_weights(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a weights-only torch file (a bare state dict, or one under 'model' or
    'state_dict'); ModelImportError naming the problem."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelImportError(f"--weights {path} is not a file; pass the path of a .safetensors or .pt file")
    if file.stat().st_size > MAX_WEIGHTS_BYTES:
        raise ModelImportError(f"--weights {path} is over 8 GB; pass the weights of one vision model")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged, pickled-code or foreign file: never unpickled, one sentence
        raise ModelImportError(
            f"--weights {path} could not be read as weights ({type(e).__name__}); pass a safetensors file or a "
            f"weights-only torch state dict"
        ) from None
    if isinstance(state, dict):
        state = state.get("model", state.get("state_dict", state))
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelImportError(f"--weights {path} holds no state dict of tensors; pass the model's state_dict()")
    return state


def _download(spec: str):
    try:
        return imported.build(spec, None)
    except ModelImportError:
        raise
    except Exception as e:  # no network, an unknown name, a half-written cache: the library's own download failed
        raise ModelImportError(
            f"could not get the weights of {spec} through {spec.partition(':')[0]} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else 'no detail'}); check the name and the network, or pass "
            f"--weights FILE"
        ) from None


def run(cfg: ImportModelConfig, ws: Workspace, report: Report, stop: threading.Event) -> ImportModelResult:
    """Import the model named by `cfg.spec` into `models/`; raises StageError with a user message."""
    with recording(STAGE, report, stop) as rec:
        if not cfg.spec:
            raise ModelImportError("no model given; pass a spec such as timm:vit_small_patch16_224")
        if cfg.name and not RUN_NAME.match(cfg.name):
            raise ModelImportError(f"{cfg.name!r} cannot name a model run; use letters, digits, '.', '_' or '-'")
        if cfg.name and (ws.kind_dir("models") / cfg.name).exists():
            raise ModelImportError(f"models/{cfg.name} already exists; pick another --name")
        imported.adapter(cfg.spec.partition(":")[0])  # the missing extra is named before anything is read
        if cfg.weights:
            rec.log(f"reading {cfg.weights}")
            model, wrapped = imported.build(cfg.spec, load_weights(cfg.weights))
            source, sha256 = f"file {Path(cfg.weights).name}", file_sha256(Path(cfg.weights).expanduser())
        else:
            rec.log(f"downloading the weights of {cfg.spec} through {cfg.spec.partition(':')[0]} (or its cache)")
            model, wrapped = _download(cfg.spec)
            source, sha256 = f"{cfg.spec.partition(':')[0]}'s download", ""
        hooks = wrapped.hook_points()
        class_names = imported.class_names(cfg.spec, model)
        record = ImportRecord(
            spec=cfg.spec,
            library_version=imported.adapter(cfg.spec.partition(":")[0]).VERSION,
            weights=source,
            weights_sha256=sha256,
            preprocess=wrapped.preprocess,
            hooks=tuple(hooks),
            default_hook=imported.default_hook(hooks),
            n_classes=_n_classes(cfg.spec, model, wrapped),
        )
        rec.run_dir = _create_run(ws, cfg, record, model, class_names, rec)
        if not sha256:
            record = dataclasses.replace(record, weights_sha256=file_sha256(rec.run_dir / "best.pt"))
            atomic_write_json(rec.run_dir / imported.RECORD, config_mod.to_dict(record))
        rec.started(config_mod.to_dict(cfg))
        layout = wrapped.token_layout(record.default_hook)
        rec.log(
            f"{cfg.spec}: {len(hooks)} hook points; at {record.default_hook} a {layout.grid[0]}x{layout.grid[1]} grid"
            + (f" after {', '.join(layout.special)}" if layout.special else "")
            + (
                f"; {record.n_classes} classes from its own head"
                + ("" if class_names else " (unnamed: its class names are not known)")
                if record.n_classes
                else "; no classification head: each labelled set collected from it fits a linear probe"
            )
        )
        summary = {
            metrics.IMPORTED_FROM.key: cfg.spec,
            metrics.PARAMETERS.key: sum(p.numel() for p in model.parameters()),
            metrics.N_CLASSES.key: record.n_classes,
            metrics.HOOKS.key: len(hooks),
        }
        rec.artifact(rec.run_dir / "best.pt", "imported weights")
        rec.progress(1, 1, "models", final=True)  # one step, done: the bar shows it
        rec.finished(summary)
        return ImportModelResult(rec.run_dir, False, cfg.spec, tuple(hooks))


@torch.no_grad()
def _n_classes(spec: str, model, wrapped) -> int:
    if not imported.has_head(spec, model):
        return 0
    size = wrapped.preprocess.size
    return int(wrapped(torch.zeros(1, 3, size, size)).shape[1])


def _create_run(ws: Workspace, cfg: ImportModelConfig, record: ImportRecord, model, class_names, rec) -> Path:
    def setup(run_dir: Path) -> None:
        rec.claim(run_dir)
        # the record first: a run killed while its weights are written is known as an unfinished import
        atomic_write_json(run_dir / imported.RECORD, config_mod.to_dict(record))
        atomic_write_json(run_dir / "config.json", config_mod.to_dict(cfg))
        model_run.write_dataset_info(run_dir, list(class_names), [], 0, 0)
        atomic_torch_save(run_dir / "best.pt", {"model": model.state_dict()})

    if cfg.name:
        return ws.new_run("models", cfg.name, setup, numbered=False)
    prefix = re.sub(r"[^A-Za-z0-9_-]+", "-", cfg.spec.partition(":")[2])[:40].strip("-") or "imported"
    return ws.new_run("models", prefix, setup)
