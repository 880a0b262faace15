"""Classifier training and evaluation: checkpoints, best-by-validation-loss, resume, stop on request."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.config import TrainModelConfig
from vitsae_tui.engine.data import ImageDataset, iterate_batches, load_dataset, normalize
from vitsae_tui.engine.device import autocast, pick_device
from vitsae_tui.engine.events import ArtifactWritten, Finished, Log, Metrics, Progress, RateMeter, Report
from vitsae_tui.engine.stages import StageError, stage_failed
from vitsae_tui.engine.vision_model import VisionTransformerClassifier
from vitsae_tui.engine.workspace import (
    Workspace,
    WorkspaceError,
    append_jsonl,
    atomic_torch_save,
    atomic_write_json,
    file_sha256,
    load_torch_file,
    read_json,
    refuse_if_owned,
    truncate_jsonl,
    write_status,
)

STAGE = "train-model"
LOG_EVERY_STEPS = 5
PROGRESS_EVERY_S = 0.25


@dataclass(frozen=True)
class ModelRun:
    run_dir: Path
    best_val_loss: float
    best_val_accuracy: float
    epochs_done: int
    stopped: bool


def learning_rate(cfg: TrainModelConfig, step: int, total_steps: int) -> float:
    if cfg.lr_schedule == "constant":
        return cfg.lr
    warmup = max(1, min(100, total_steps // 10))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training order of one epoch: a permutation fixed by (seed, epoch), so resume replays it exactly."""
    return np.random.default_rng([seed, epoch]).permutation(n)


@torch.no_grad()
def evaluate(model, dataset: ImageDataset, device, bf16: bool, batch_size: int, num_workers: int = 0) -> dict:
    """Mean cross-entropy and accuracy over the labelled, decodable images of a split."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for images, labels, ok in iterate_batches(dataset, np.arange(len(dataset)), batch_size, num_workers):
        keep = ok & (labels >= 0)
        if not keep.any():
            continue
        images, labels = images[keep].to(device), labels[keep].to(device)
        with autocast(device, bf16):
            logits = model(normalize(images))
        total_loss += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(-1) == labels).sum().item()
        count += len(labels)
    return {"val_loss": total_loss / max(count, 1), "val_accuracy": correct / max(count, 1), "val_images": count}


def _save_checkpoint(path: Path, model, optimizer, epoch: int, batch_in_epoch: int, step: int, best: dict) -> None:
    atomic_torch_save(
        path,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "step": step,
            "best_val_loss": best["val_loss"],
            "best_val_accuracy": best["val_accuracy"],
            "torch_rng": torch.get_rng_state(),
        },
    )


def train_model(
    cfg: TrainModelConfig,
    ws: Workspace,
    report: Report,
    stop: threading.Event,
    resume: str | None = None,
) -> ModelRun:
    """Train (or resume) a classifier run in `models/`; returns when done, stopped, or raises StageError."""
    run_dir: Path | None = None
    try:
        if resume:
            candidate = ws.run_dir("models", resume)
            refuse_if_owned(candidate)  # before run_dir is set: a refusal must not touch the owner's status
            run_dir = candidate
            cfg = config_mod.from_dict(TrainModelConfig, read_json(run_dir / "config.json"), f"{resume}/config.json")
        else:
            run_dir = ws.new_run("models", cfg.preset)
            atomic_write_json(run_dir / "config.json", config_mod.to_dict(cfg))
        return _train(cfg, ws, run_dir, report, stop, resume is not None)
    except (StageError, WorkspaceError, config_mod.ConfigError, RuntimeError, OSError, ValueError) as e:
        raise stage_failed(STAGE, e, report, run_dir) from e


def _train(cfg: TrainModelConfig, ws: Workspace, run_dir: Path, report: Report, stop: threading.Event, resuming: bool) -> ModelRun:
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    report(Log(STAGE, f"loading {cfg.data.dataset} data"))
    train_set = load_dataset(ws, cfg.data, "train")
    val_set = load_dataset(ws, cfg.data, "val")
    if len(train_set) == 0 or len(val_set) == 0:
        raise StageError(f"{cfg.data.dataset} has no training or no validation images; add images or lower --val-fraction")
    if train_set.class_names and len(train_set.class_names) != cfg.model.n_classes:
        cfg = config_mod.from_dict(
            TrainModelConfig,
            {**config_mod.to_dict(cfg), "model": {**config_mod.to_dict(cfg.model), "n_classes": len(train_set.class_names)}},
        )
        atomic_write_json(run_dir / "config.json", config_mod.to_dict(cfg))
    if (train_set.labels() < 0).all():
        raise StageError(f"{cfg.data.dataset} has no class sub-folders, so there are no labels to train on")
    atomic_write_json(
        run_dir / "dataset.json",
        {"class_names": list(train_set.class_names), "concept_names": list(train_set.concept_names),
         "n_train": len(train_set), "n_val": len(val_set)},
    )

    model = VisionTransformerClassifier(cfg.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epoch, batch_in_epoch, step = 0, 0, 0
    best = {"val_loss": math.inf, "val_accuracy": 0.0}
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if resuming:
        if not last_path.exists():
            raise StageError(f"no checkpoint in {run_dir.name}; start a new run instead of resuming")
        state = load_torch_file(last_path)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError):
            raise StageError(f"the checkpoint in {run_dir.name} does not match its config; start a new run") from None
        epoch, batch_in_epoch, step = int(state["epoch"]), int(state["batch_in_epoch"]), int(state["step"])
        best = {"val_loss": float(state["best_val_loss"]), "val_accuracy": float(state["best_val_accuracy"])}
        torch.set_rng_state(state["torch_rng"])
        saved_step = step
        truncate_jsonl(run_dir / "metrics.jsonl", lambda r: int(r.get("step", 0)) <= saved_step)
        report(Log(STAGE, f"resuming {run_dir.name} at epoch {epoch + 1}, step {step}"))

    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    write_status(run_dir, "running", step=step, total_steps=total_steps, device=str(device), message="")
    report(Log(STAGE, f"training {run_dir.name} on {device}: {len(train_set)} train / {len(val_set)} val images, "
                      f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters"))
    metrics_path = run_dir / "metrics.jsonl"
    meter = RateMeter()
    last_progress = 0.0
    skipped = 0
    loss_sum, loss_count, correct_sum = 0.0, 0, 0
    stopped = False

    while epoch < cfg.epochs and not stopped:
        model.train()
        order = epoch_order(cfg.seed, epoch, len(train_set))[batch_in_epoch * cfg.batch_size :]
        for images, labels, ok in iterate_batches(train_set, order, cfg.batch_size, cfg.num_workers):
            keep = ok & (labels >= 0)
            skipped += int((~ok).sum())
            if keep.any():
                images, labels = images[keep].to(device, non_blocking=True), labels[keep].to(device, non_blocking=True)
                with autocast(device, cfg.bf16):
                    logits = model(normalize(images))
                    loss = F.cross_entropy(logits.float(), labels)
                if not torch.isfinite(loss):
                    raise StageError(f"the loss became {loss.item()} at step {step}; lower --lr and resume from the last checkpoint")
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(cfg, step, total_steps)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(labels)
                correct_sum += (logits.argmax(-1) == labels).sum().item()
                loss_count += len(labels)
            step += 1
            batch_in_epoch += 1
            if step % LOG_EVERY_STEPS == 0 and loss_count:
                row = {"kind": "step", "step": step, "epoch": epoch + batch_in_epoch / steps_per_epoch,
                       "train_loss": loss_sum / loss_count, "train_accuracy": correct_sum / loss_count,
                       "lr": optimizer.param_groups[0]["lr"]}
                append_jsonl(metrics_path, row)
                report(Metrics(STAGE, row))
                loss_sum, loss_count, correct_sum = 0.0, 0, 0
            now = time.perf_counter()
            if now - last_progress >= PROGRESS_EVERY_S:
                last_progress = now
                report(Progress(STAGE, step, total_steps, "steps", meter.elapsed_s, meter.update(step)))
            if step % cfg.checkpoint_every == 0:
                _save_checkpoint(last_path, model, optimizer, epoch, batch_in_epoch, step, best)
                write_status(run_dir, "running", step=step)
            if stop.is_set():
                stopped = True
                break
        if stopped:
            break
        epoch += 1
        batch_in_epoch = 0
        val = evaluate(model, val_set, device, cfg.bf16, cfg.batch_size * 2, cfg.num_workers)
        row = {"kind": "epoch", "step": step, "epoch": epoch, **val}
        append_jsonl(metrics_path, row)
        report(Metrics(STAGE, row))
        report(Log(STAGE, f"epoch {epoch}/{cfg.epochs}: val loss {val['val_loss']:.4f}, accuracy {val['val_accuracy']:.1%}"))
        if val["val_loss"] < best["val_loss"]:
            best = {"val_loss": val["val_loss"], "val_accuracy": val["val_accuracy"]}
            atomic_torch_save(best_path, {"model": model.state_dict(), "epoch": epoch, "step": step, **val})
            report(ArtifactWritten(STAGE, str(best_path), "best checkpoint"))
        _save_checkpoint(last_path, model, optimizer, epoch, batch_in_epoch, step, best)
        report(ArtifactWritten(STAGE, str(last_path), "checkpoint"))
        write_status(run_dir, "running", step=step, epoch=epoch, **{f"best_{k}": v for k, v in best.items()})

    if stopped:
        _save_checkpoint(last_path, model, optimizer, epoch, batch_in_epoch, step, best)
        report(ArtifactWritten(STAGE, str(last_path), "checkpoint"))
    if skipped:
        report(Log(STAGE, f"skipped {skipped} unreadable images", "warning"))
    summary = {"best_val_loss": best["val_loss"], "best_val_accuracy": best["val_accuracy"], "epochs_done": epoch,
               "step": step, "skipped_images": skipped, "elapsed_s": round(meter.elapsed_s, 1)}
    write_status(run_dir, "stopped" if stopped else "finished", **summary, message="")
    report(Progress(STAGE, step, total_steps, "steps", meter.elapsed_s, 0.0))
    report(Finished(STAGE, str(run_dir), summary, stopped))
    return ModelRun(run_dir, best["val_loss"], best["val_accuracy"], epoch, stopped)


@dataclass(frozen=True)
class LoadedModel:
    model: VisionTransformerClassifier
    config: TrainModelConfig
    checkpoint_path: Path
    checkpoint_sha256: str
    class_names: tuple[str, ...]


def load_model(ws: Workspace, run: str, checkpoint: str = "best", device: str | torch.device = "cpu") -> LoadedModel:
    """A trained model in eval mode, from its `best` or `last` checkpoint, with the checkpoint's hash."""
    run_dir = ws.run_dir("models", run)
    cfg = config_mod.from_dict(TrainModelConfig, read_json(run_dir / "config.json"), f"{run}/config.json")
    if checkpoint not in ("best", "last"):
        raise WorkspaceError(f"checkpoint {checkpoint!r} is not 'best' or 'last'")
    path = run_dir / f"{checkpoint}.pt"
    if not path.exists():
        raise WorkspaceError(f"no {checkpoint} checkpoint in models/{run}; train the model first or pick another run")
    state = load_torch_file(path)
    model = VisionTransformerClassifier(cfg.model)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, TypeError):
        raise WorkspaceError(f"the {checkpoint} checkpoint of models/{run} does not match its config.json ({cfg.preset} preset)") from None
    dataset_info = read_json(run_dir / "dataset.json") if (run_dir / "dataset.json").exists() else {}
    model.to(pick_device(device) if isinstance(device, str) else device).eval()
    return LoadedModel(model, cfg, path, file_sha256(path), tuple(dataset_info.get("class_names", ())))
