"""Stage train-model: classifier training and evaluation, best-by-validation-loss, resume, stop on request."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine import distributed, model_run
from vitsae_tui.engine.config import TrainModelConfig
from vitsae_tui.engine.data import ImageDataset, iterate_batches, load_dataset, normalize
from vitsae_tui.engine.device import autocast
from vitsae_tui.engine.errors import StageError, StopRequested
from vitsae_tui.engine.events import (
    ArtifactWritten,
    Finished,
    Log,
    Metrics,
    Progress,
    RateMeter,
    Report,
    Started,
    progress_callback,
)
from vitsae_tui.engine.text import shown
from vitsae_tui.engine.vision_model import VisionTransformerClassifier
from vitsae_tui.engine.workspace import (
    Workspace,
    append_jsonl,
    claim_run,
    remove_partial_writes,
    truncate_jsonl,
    write_status,
)

STAGE = "train-model"
LOG_EVERY_STEPS = 5
PROGRESS_EVERY_S = 0.25


@dataclass(frozen=True)
class TrainModelResult:
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
def evaluate(
    model,
    dataset: ImageDataset,
    device,
    bf16: bool,
    batch_size: int,
    num_workers: int = 0,
    ranks: distributed.Ranks | None = None,
) -> dict:
    """Mean cross-entropy and accuracy over the labelled, decodable images of a split (each rank scores its share)."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    mine = np.arange(len(dataset))[ranks.local_rows(len(dataset))] if ranks else np.arange(len(dataset))
    for images, labels, ok in iterate_batches(dataset, mine, batch_size, num_workers):
        keep = ok & (labels >= 0)
        if not keep.any():
            continue
        images, labels = images[keep].to(device), labels[keep].to(device)
        with autocast(device, bf16):
            logits = model(normalize(images))
        total_loss += F.cross_entropy(_at_least_fp32(logits), labels, reduction="sum").item()
        correct += (logits.argmax(-1) == labels).sum().item()
        count += len(labels)
    if ranks is not None and ranks.enabled:
        total_loss, correct, count = ranks.all_reduce(
            torch.tensor([total_loss, correct, count], dtype=torch.float64, device=device)
        ).tolist()
        correct, count = int(correct), int(count)
    return {"val_loss": total_loss / max(count, 1), "val_accuracy": correct / max(count, 1), "val_images": count}


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    """bf16 logits from autocast go to float32 for the loss; float64 ones stay float64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def run(
    cfg: TrainModelConfig,
    ws: Workspace,
    report: Report,
    stop: threading.Event,
    resume: str | None = None,
) -> TrainModelResult:
    """Train (or resume) a classifier run in `models/`; returns when done, stopped, or raises StageError.

    Under torchrun every rank calls this; rank 0 alone creates the run and writes to it.
    """
    run_dir: Path | None = None
    ranks = None
    with contextlib.ExitStack() as held:  # the run's claim, held until the stage returns
        try:
            if resume:
                # before anything reads the run; rank 0 alone claims it (others would find it claimed)
                if distributed.env_rank() == 0:
                    held.enter_context(claim_run(ws.run_dir("models", resume)))
                cfg = model_run.read_config(ws, resume)
                model_run.load_checkpoint_path(ws.run_dir("models", resume))  # before the data is drawn
            else:  # a folder is recorded by its absolute path: every later stage reads it from its own cwd
                cfg = dataclasses.replace(cfg, data=cfg.data.resolved())
            ranks = distributed.setup(cfg.device)
            ranks.check_divisible(cfg.batch_size)
            run_dir = ws.run_dir("models", ranks.on_main(lambda: _claim_run(ws, cfg, resume, held)))
            report(Started(STAGE, str(run_dir), config_mod.to_dict(cfg), resumed=resume is not None))
            result = _train(cfg, ws, run_dir, report, stop, resume is not None, ranks)
            distributed.teardown(ranks)
            return result
        except Exception as e:
            raise distributed.stage_failed_on_rank(STAGE, e, report, run_dir, ranks) from e


def _claim_run(ws: Workspace, cfg, resume: str | None, held: contextlib.ExitStack) -> str:
    """The run folder to write, claimed for this process: the resumed one, or a new one with its config."""
    if resume:
        remove_partial_writes(ws.run_dir("models", resume))  # a dead owner's half-written checkpoint
        return resume

    def setup(run_dir: Path) -> None:
        held.enter_context(claim_run(run_dir))
        model_run.write_config(run_dir, cfg)

    return ws.new_run("models", cfg.preset, setup).name


def _local_batches(
    dataset: ImageDataset, order: np.ndarray, batch_size: int, num_workers: int, ranks: distributed.Ranks
):
    """This rank's share of each global batch of `order`, one (possibly empty) batch per global batch."""
    if not ranks.enabled:
        yield from iterate_batches(dataset, order, batch_size, num_workers)
        return
    pieces = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    pieces = [piece[ranks.local_rows(len(piece))] for piece in pieces]
    # every piece but the last has batch_size / world_size images, so one flat pass cuts them back apart
    yield from iterate_batches(dataset, np.concatenate(pieces), batch_size // ranks.world_size, num_workers)
    if pieces and len(pieces[-1]) == 0:
        yield (
            torch.empty(0, 3, 224, 224, dtype=torch.uint8),
            torch.empty(0, dtype=torch.long),
            torch.empty(0, dtype=torch.bool),
        )


def _train(
    cfg: TrainModelConfig,
    ws: Workspace,
    run_dir: Path,
    report: Report,
    stop: threading.Event,
    resuming: bool,
    ranks: distributed.Ranks,
) -> TrainModelResult:
    device = ranks.device
    torch.manual_seed(cfg.seed)
    try:
        cfg, train_set, val_set = _load_data(cfg, ws, run_dir, report, ranks, stop)
    except StopRequested:  # while the synthetic images were drawn: no step taken, nothing to resume
        summary = {"epochs_done": 0, "step": 0}
        if ranks.is_main:
            write_status(run_dir, "stopped", **summary, message="stopped while drawing the images, before training")
        report(Finished(STAGE, str(run_dir), summary, True))
        return TrainModelResult(run_dir, math.inf, 0.0, 0, True)
    model = distributed.sync_batchnorm(VisionTransformerClassifier(cfg.model).to(device), ranks)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epoch, batch_in_epoch, step = 0, 0, 0
    best = {"val_loss": math.inf, "val_accuracy": 0.0}
    last_path, best_path = model_run.checkpoint_path(run_dir, "last"), model_run.checkpoint_path(run_dir, "best")
    if resuming:
        epoch, batch_in_epoch, step, best = _restore(run_dir, model, optimizer, report, ranks)
    net = model
    if ranks.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if not ranks.is_main:  # dropout masks must differ between ranks, yet stay reproducible
            torch.manual_seed(cfg.seed * 1_000_003 + ranks.rank * 7919 + step)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if ranks.is_main:
        write_status(
            run_dir,
            "running",
            step=step,
            total_steps=total_steps,
            device=str(device),
            message="",
            world_size=ranks.world_size,
        )
    processes = f" x {ranks.world_size} processes" if ranks.enabled else ""
    report(
        Log(
            STAGE,
            f"training {run_dir.name} on {device}{processes}: {len(train_set)} train / {len(val_set)} val "
            f"images, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters",
        )
    )
    metrics_path = run_dir / "metrics.jsonl"
    meter = RateMeter()
    last_progress = 0.0
    skipped = 0
    loss_sum, loss_count, correct_sum = 0.0, 0, 0
    stopped = False

    while epoch < cfg.epochs and not stopped:
        model.train()
        trained_this_epoch, whole_epoch = 0, batch_in_epoch == 0
        order = epoch_order(cfg.seed, epoch, len(train_set))[batch_in_epoch * cfg.batch_size :]
        for images, labels, ok in _local_batches(train_set, order, cfg.batch_size, cfg.num_workers, ranks):
            keep = ok & (labels >= 0)
            skipped += int((~ok).sum())
            n_local = int(keep.sum())
            # agree first on the global count: a step runs only if every rank has images (DDP needs them all)
            n_global, ranks_empty = _reduced(ranks, device, n_local, n_local == 0)
            if ranks_empty == 0:
                images, labels = images[keep].to(device, non_blocking=True), labels[keep].to(device, non_blocking=True)
                with autocast(device, cfg.bf16):
                    logits = net(normalize(images))
                    loss = F.cross_entropy(_at_least_fp32(logits), labels)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(cfg, step, total_steps)
                optimizer.zero_grad(set_to_none=True)
                # DDP averages gradients over ranks; weighting by each rank's share makes that the global-batch mean
                (loss * (n_local * ranks.world_size / n_global)).backward()
                local_loss, local_correct = loss.item(), (logits.argmax(-1) == labels).sum().item()
                batch_loss, batch_correct, non_finite = _reduced(
                    ranks, device, local_loss * n_local, local_correct, not math.isfinite(local_loss)
                )
                if non_finite:
                    raise StageError(
                        f"the loss became non-finite at step {step}; start a new run with a --lr below {cfg.lr:g} "
                        "(a resumed run keeps its own settings)"
                    )
                optimizer.step()
                loss_sum += batch_loss
                correct_sum += int(batch_correct)
                loss_count += int(n_global)
                trained_this_epoch += int(n_global)
            step += 1
            batch_in_epoch += 1
            if step % LOG_EVERY_STEPS == 0 and loss_count:
                row = {
                    "kind": "step",
                    "step": step,
                    "epoch": epoch + batch_in_epoch / steps_per_epoch,
                    "train_loss": loss_sum / loss_count,
                    "train_accuracy": correct_sum / loss_count,
                    "lr": optimizer.param_groups[0]["lr"],
                }
                if ranks.is_main:
                    append_jsonl(metrics_path, row)
                report(Metrics(STAGE, row))
                loss_sum, loss_count, correct_sum = 0.0, 0, 0
            now = time.perf_counter()
            if now - last_progress >= PROGRESS_EVERY_S:
                last_progress = now
                report(Progress(STAGE, step, total_steps, "steps", meter.elapsed_s, meter.update(step)))
            if step % cfg.checkpoint_every == 0 and ranks.is_main:
                model_run.save_checkpoint(last_path, model, optimizer, epoch, batch_in_epoch, step, best)
                write_status(run_dir, "running", step=step)
            if ranks.any(stop.is_set()):
                stopped = True
                break
        if stopped:
            break
        if whole_epoch and trained_this_epoch == 0:
            raise StageError(
                f"none of the {len(train_set)} training images of {cfg.data.dataset} could be decoded; "
                f"check that the folder holds readable JPEG/PNG files"
            )
        epoch += 1
        batch_in_epoch = 0
        val = evaluate(model, val_set, device, cfg.bf16, cfg.batch_size * 2, cfg.num_workers, ranks)
        if val["val_images"] == 0:
            raise StageError(
                f"none of the {len(val_set)} validation images of {cfg.data.dataset} could be decoded; "
                f"check the files or raise --val-fraction"
            )
        row = {"kind": "epoch", "step": step, "epoch": epoch, **val}
        report(Metrics(STAGE, row))
        report(
            Log(
                STAGE, f"epoch {epoch}/{cfg.epochs}: val loss {val['val_loss']:.4f}, accuracy {val['val_accuracy']:.1%}"
            )
        )
        improved = val["val_loss"] < best["val_loss"]
        if improved:
            best = {"val_loss": val["val_loss"], "val_accuracy": val["val_accuracy"]}
        if ranks.is_main:
            append_jsonl(metrics_path, row)
            if improved:
                model_run.save_best(best_path, model, epoch, step, val)
                report(ArtifactWritten(STAGE, str(best_path), "best checkpoint"))
            model_run.save_checkpoint(last_path, model, optimizer, epoch, batch_in_epoch, step, best)
            report(ArtifactWritten(STAGE, str(last_path), "checkpoint"))
            write_status(run_dir, "running", step=step, epoch=epoch, **{f"best_{k}": v for k, v in best.items()})

    (skipped,) = _reduced(ranks, device, skipped)
    skipped = int(skipped)
    if stopped and ranks.is_main:
        model_run.save_checkpoint(last_path, model, optimizer, epoch, batch_in_epoch, step, best)
        report(ArtifactWritten(STAGE, str(last_path), "checkpoint"))
    if skipped:
        report(Log(STAGE, f"skipped {skipped} unreadable images", "warning"))
    summary = {
        "best_val_loss": best["val_loss"],
        "best_val_accuracy": best["val_accuracy"],
        "epochs_done": epoch,
        "step": step,
        "skipped_images": skipped,
        "elapsed_s": round(meter.elapsed_s, 1),
    }
    if ranks.is_main:
        write_status(run_dir, "stopped" if stopped else "finished", **summary, message="")
    report(Progress(STAGE, step, total_steps, "steps", meter.elapsed_s, 0.0))
    report(Finished(STAGE, str(run_dir), summary, stopped))
    return TrainModelResult(run_dir, best["val_loss"], best["val_accuracy"], epoch, stopped)


def _load_data(
    cfg: TrainModelConfig, ws: Workspace, run_dir: Path, report: Report, ranks: distributed.Ranks, stop
) -> tuple[TrainModelConfig, ImageDataset, ImageDataset]:
    """The train and val splits, and the config with the head sized to the dataset's classes (saved in the run)."""
    report(Log(STAGE, f"loading {cfg.data.dataset} data"))
    sets: dict = {}
    drawn = progress_callback(report, STAGE, "images drawn")
    # rank 0 draws, downloads or caches the data first; the other ranks then read its cache
    ranks.on_main(
        lambda: sets.update(
            train=load_dataset(ws, cfg.data, "train", drawn, stop), val=load_dataset(ws, cfg.data, "val", drawn, stop)
        )
    )
    train_set = sets["train"] if sets else load_dataset(ws, cfg.data, "train")
    val_set = sets["val"] if sets else load_dataset(ws, cfg.data, "val")
    if len(train_set) == 0 or len(val_set) == 0:
        raise StageError(
            f"{cfg.data.dataset} has no training or no validation images; add images or lower --val-fraction"
        )
    if len(train_set.class_names) == 1:
        raise StageError(
            f"{cfg.data.dataset} has one class folder ({shown(train_set.class_names[0])}); a classifier needs at "
            "least two: add a sub-folder per class"
        )
    if train_set.class_names and len(train_set.class_names) != cfg.model.n_classes:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_classes=len(train_set.class_names)))
        if ranks.is_main:
            model_run.write_config(run_dir, cfg)
    if (train_set.labels() < 0).all():
        raise StageError(f"{cfg.data.dataset} has no class sub-folders, so there are no labels to train on")
    if ranks.is_main:
        model_run.write_dataset_info(
            run_dir, list(train_set.class_names), list(train_set.concept_names), len(train_set), len(val_set)
        )
    return cfg, train_set, val_set


def _restore(run_dir: Path, model, optimizer, report: Report, ranks: distributed.Ranks) -> tuple[int, int, int, dict]:
    """Model, optimizer and RNG from last.pt; returns (epoch, batch in epoch, step, best validation so far)."""
    state = model_run.load_checkpoint(run_dir)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError):
        raise StageError(f"the checkpoint in {run_dir.name} does not match its config; start a new run") from None
    epoch, batch_in_epoch, step = int(state["epoch"]), int(state["batch_in_epoch"]), int(state["step"])
    best = {"val_loss": float(state["best_val_loss"]), "val_accuracy": float(state["best_val_accuracy"])}
    torch.set_rng_state(state["torch_rng"])
    if ranks.is_main:
        truncate_jsonl(run_dir / "metrics.jsonl", lambda r: int(r.get("step", 0)) <= step)
    report(Log(STAGE, f"resuming {run_dir.name} at epoch {epoch + 1}, step {step}"))
    return epoch, batch_in_epoch, step, best


def _reduced(ranks: distributed.Ranks, device: torch.device, *values: float) -> list[float]:
    """The values summed over ranks (themselves on one process), in one small collective."""
    if not ranks.enabled:
        return [float(v) for v in values]
    return ranks.all_reduce(torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)).tolist()
