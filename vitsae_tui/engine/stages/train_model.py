"""Stage train-model: classifier training and evaluation, best-by-validation-loss, resume, stop on request."""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine import distributed, metrics, model_run
from vitsae_tui.engine.config import TrainModelConfig
from vitsae_tui.engine.data import ImageDataset, iterate_batches, load_dataset, normalize
from vitsae_tui.engine.device import autocast
from vitsae_tui.engine.errors import StageError, StopRequested
from vitsae_tui.engine.events import Report
from vitsae_tui.engine.models.native import VisionTransformerClassifier
from vitsae_tui.engine.stages.run import RunRecorder, StageResult, recording
from vitsae_tui.engine.text import shown
from vitsae_tui.engine.workspace import Workspace, remove_partial_writes

STAGE = "train-model"
LOG_EVERY_STEPS = 5


@dataclass(frozen=True)
class Validation:
    loss: float
    accuracy: float
    images: int
    """the labelled images that could be decoded and scored"""


NO_VALIDATION = Validation(math.inf, 0.0, 0)


@dataclass(frozen=True)
class TrainModelResult(StageResult):
    best_val_loss: float
    best_val_accuracy: float
    epochs_done: int


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
) -> Validation:
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
    return Validation(total_loss / max(count, 1), correct / max(count, 1), count)


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
    with recording(STAGE, report, stop) as rec:
        if resume:
            # before anything reads the run; rank 0 alone claims it (others would find it claimed)
            if distributed.env_rank() == 0:
                rec.claim(ws.run_dir("models", resume))
            cfg = model_run.read_config(ws, resume)
            model_run.load_checkpoint_path(ws.run_dir("models", resume))  # before the data is drawn
        else:  # a folder is recorded by its absolute path: every later stage reads it from its own cwd
            cfg = dataclasses.replace(cfg, data=cfg.data.resolved())
        rec.ranks = ranks = distributed.setup(cfg.device)
        ranks.check_divisible(cfg.batch_size)
        rec.run_dir = ws.run_dir("models", ranks.on_main(lambda: _claim_run(ws, cfg, resume, rec)))
        rec.started(config_mod.to_dict(cfg), resumed=resume is not None)
        torch.manual_seed(cfg.seed)
        try:
            cfg, train_set, val_set = _load_data(cfg, ws, rec)
        except StopRequested:  # while the synthetic images were drawn: no step taken, nothing to resume
            summary = {metrics.EPOCHS_DONE.key: 0, metrics.STEP.key: 0}
            rec.status("stopped", **summary, message="stopped while drawing the images, before training")
            rec.finished(summary, stopped=True, status=False)
            return TrainModelResult(rec.run_dir, True, math.inf, 0.0, 0)
        result = ModelTraining(cfg, train_set, val_set, rec, resume is not None).fit()
        distributed.teardown(ranks)
        return result


def _claim_run(ws: Workspace, cfg, resume: str | None, rec: RunRecorder) -> str:
    """The run folder to write, claimed for this process: the resumed one, or a new one with its config."""
    if resume:
        remove_partial_writes(ws.run_dir("models", resume))  # a dead owner's half-written checkpoint
        return resume

    def setup(run_dir: Path) -> None:
        rec.claim(run_dir)
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


@dataclass
class _Window:
    """The training batches since the last metrics row."""

    loss: float = 0.0
    images: int = 0
    correct: int = 0


class ModelTraining:
    """One classifier run's loop, shaped like SAELens's fit(): train steps, a validation pass per epoch, checkpoints,
    and the counters a resume restores (epoch, batch within it, step, best validation so far)."""

    def __init__(
        self,
        cfg: TrainModelConfig,
        train_set: ImageDataset,
        val_set: ImageDataset,
        rec: RunRecorder,
        resuming: bool,
    ):
        self.cfg, self.train_set, self.val_set, self.rec = cfg, train_set, val_set, rec
        self.ranks, self.device = rec.ranks, rec.ranks.device
        self.model = distributed.sync_batchnorm(VisionTransformerClassifier(cfg.model).to(self.device), self.ranks)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best = NO_VALIDATION
        if resuming:
            self.epoch, self.batch_in_epoch, self.step, self.best = _restore(rec, self.model, self.optimizer)
        self.net = self._parallel()
        self.steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.window = _Window()
        self.skipped = 0

    def fit(self) -> TrainModelResult:
        self._announce()
        stopped = False
        while self.epoch < self.cfg.epochs and not stopped:
            stopped = self._train_epoch()
            if not stopped:
                self._validate()
        return self._finish(stopped)

    def _parallel(self) -> torch.nn.Module:
        """The model as the steps call it: wrapped in DistributedDataParallel under torchrun."""
        if not self.ranks.enabled:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        if not self.ranks.is_main:  # dropout masks must differ between ranks, yet stay reproducible
            torch.manual_seed(self.cfg.seed * 1_000_003 + self.ranks.rank * 7919 + self.step)
        device = self.device
        return DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)

    def _announce(self) -> None:
        ranks = self.ranks
        self.rec.status(
            "running",
            step=self.step,
            total_steps=self.total_steps,
            device=str(self.device),
            message="",
            world_size=ranks.world_size,
        )
        processes = f" x {ranks.world_size} processes" if ranks.enabled else ""
        parameters = sum(p.numel() for p in self.model.parameters()) / 1e6
        self.rec.log(
            f"training {self.rec.run_dir.name} on {self.device}{processes}: {len(self.train_set)} train / "
            f"{len(self.val_set)} val images, {parameters:.2f}M parameters"
        )

    def _train_epoch(self) -> bool:
        """The rest of the current epoch; True when a stop was asked for."""
        cfg, rec = self.cfg, self.rec
        self.model.train()
        trained, whole_epoch = 0, self.batch_in_epoch == 0
        order = epoch_order(cfg.seed, self.epoch, len(self.train_set))[self.batch_in_epoch * cfg.batch_size :]
        for images, labels, ok in _local_batches(self.train_set, order, cfg.batch_size, cfg.num_workers, self.ranks):
            trained += self._train_step(images, labels, ok)
            self.step += 1
            self.batch_in_epoch += 1
            if self.step % LOG_EVERY_STEPS == 0 and self.window.images:
                self._log_window()
            rec.progress(self.step, self.total_steps, "steps")
            if self.step % cfg.checkpoint_every == 0 and rec.is_main:
                self._checkpoint(report=False)
                rec.status("running", step=self.step)
            if rec.stop_requested():
                return True
        if whole_epoch and trained == 0:
            raise StageError(
                f"none of the {len(self.train_set)} training images of {cfg.data.dataset} could be decoded; "
                f"check that the folder holds readable JPEG/PNG files"
            )
        return False

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor, ok: torch.Tensor) -> int:
        """One optimizer step on this rank's share of a global batch; returns the global batch's trained images."""
        cfg, ranks, device = self.cfg, self.ranks, self.device
        keep = ok & (labels >= 0)
        self.skipped += int((~ok).sum())
        n_local = int(keep.sum())
        # agree first on the global count: a step runs only if every rank has images (DDP needs them all)
        n_global, ranks_empty = _reduced(ranks, device, n_local, n_local == 0)
        if ranks_empty:
            return 0
        images, labels = images[keep].to(device, non_blocking=True), labels[keep].to(device, non_blocking=True)
        with autocast(device, cfg.bf16):
            logits = self.net(normalize(images))
            loss = F.cross_entropy(_at_least_fp32(logits), labels)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.step, self.total_steps)
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks; weighting by each rank's share makes that the global-batch mean
        (loss * (n_local * ranks.world_size / n_global)).backward()
        local_loss, local_correct = loss.item(), (logits.argmax(-1) == labels).sum().item()
        batch_loss, batch_correct, non_finite = _reduced(
            ranks, device, local_loss * n_local, local_correct, not math.isfinite(local_loss)
        )
        if non_finite:
            raise StageError(
                f"the loss became non-finite at step {self.step}; start a new run with a --lr below {cfg.lr:g} "
                "(a resumed run keeps its own settings)"
            )
        self.optimizer.step()
        self.window.loss += batch_loss
        self.window.correct += int(batch_correct)
        self.window.images += int(n_global)
        return int(n_global)

    def _log_window(self) -> None:
        window = self.window
        row = metrics.ModelStep(
            step=self.step,
            epoch=self.epoch + self.batch_in_epoch / self.steps_per_epoch,
            train_loss=window.loss / window.images,
            train_accuracy=window.correct / window.images,
            lr=self.optimizer.param_groups[0]["lr"],
        )
        self.rec.metrics(row)
        self.window = _Window()

    def _validate(self) -> None:
        """The end of an epoch: the validation pass, the best checkpoint when it improved, the last checkpoint."""
        cfg, rec = self.cfg, self.rec
        self.epoch += 1
        self.batch_in_epoch = 0
        val = evaluate(self.model, self.val_set, self.device, cfg.bf16, cfg.batch_size * 2, cfg.num_workers, self.ranks)
        if val.images == 0:
            raise StageError(
                f"none of the {len(self.val_set)} validation images of {cfg.data.dataset} could be decoded; "
                f"check the files or raise --val-fraction"
            )
        row = metrics.ModelEpoch(self.step, self.epoch, val.loss, val.accuracy, val.images)
        rec.metrics(row)
        rec.log(f"epoch {self.epoch}/{cfg.epochs}: val loss {val.loss:.4f}, accuracy {val.accuracy:.1%}")
        improved = val.loss < self.best.loss
        if improved:
            self.best = val
        if rec.is_main:
            if improved:
                best_path = model_run.checkpoint_path(rec.run_dir, "best")
                model_run.save_best(best_path, self.model, metrics.to_json(row))
                rec.artifact(best_path, "best checkpoint")
            self._checkpoint()
            rec.status("running", step=self.step, epoch=self.epoch, **self._best())

    def _checkpoint(self, report: bool = True) -> None:
        last_path = model_run.checkpoint_path(self.rec.run_dir, "last")
        model_run.save_checkpoint(
            last_path, self.model, self.optimizer, self.epoch, self.batch_in_epoch, self.step, self._best()
        )
        if report:
            self.rec.artifact(last_path, "checkpoint")

    def _finish(self, stopped: bool) -> TrainModelResult:
        rec = self.rec
        (skipped,) = _reduced(self.ranks, self.device, self.skipped)
        if stopped and rec.is_main:
            self._checkpoint()
        if skipped:
            rec.log(f"skipped {int(skipped)} unreadable images", "warning")
        summary = {
            **self._best(),
            metrics.EPOCHS_DONE.key: self.epoch,
            metrics.STEP.key: self.step,
            metrics.SKIPPED_IMAGES.key: int(skipped),
            metrics.ELAPSED_S.key: round(rec.meter.elapsed_s, 1),
        }
        rec.progress(self.step, self.total_steps, "steps", final=True)
        rec.finished(summary, stopped)
        return TrainModelResult(rec.run_dir, stopped, self.best.loss, self.best.accuracy, self.epoch)

    def _best(self) -> dict[str, float]:
        """The best validation so far, as the status and the checkpoint record it."""
        return {metrics.BEST_VAL_LOSS.key: self.best.loss, metrics.BEST_VAL_ACCURACY.key: self.best.accuracy}


def _load_data(
    cfg: TrainModelConfig, ws: Workspace, rec: RunRecorder
) -> tuple[TrainModelConfig, ImageDataset, ImageDataset]:
    """The train and val splits, and the config with the head sized to the dataset's classes (saved in the run)."""
    rec.log(f"loading {cfg.data.dataset} data")
    sets: dict = {}
    drawn, stop, ranks, run_dir = rec.sub_progress("images drawn"), rec.stop, rec.ranks, rec.run_dir
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
        if rec.is_main:
            model_run.write_config(run_dir, cfg)
    if (train_set.labels() < 0).all():
        raise StageError(f"{cfg.data.dataset} has no class sub-folders, so there are no labels to train on")
    if rec.is_main:
        model_run.write_dataset_info(
            run_dir, list(train_set.class_names), list(train_set.concept_names), len(train_set), len(val_set)
        )
    return cfg, train_set, val_set


def _restore(rec: RunRecorder, model, optimizer) -> tuple[int, int, int, Validation]:
    """Model, optimizer and RNG from last.pt; returns (epoch, batch in epoch, step, best validation so far)."""
    run_dir = rec.run_dir
    state = model_run.load_checkpoint(run_dir)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError):
        raise StageError(f"the checkpoint in {run_dir.name} does not match its config; start a new run") from None
    epoch, batch_in_epoch, step = int(state["epoch"]), int(state["batch_in_epoch"]), int(state["step"])
    best = Validation(float(state[metrics.BEST_VAL_LOSS.key]), float(state[metrics.BEST_VAL_ACCURACY.key]), 0)
    torch.set_rng_state(state["torch_rng"])
    rec.truncate_metrics(step)
    rec.log(f"resuming {run_dir.name} at epoch {epoch + 1}, step {step}")
    return epoch, batch_in_epoch, step, best


def _reduced(ranks: distributed.Ranks, device: torch.device, *values: float) -> list[float]:
    """The values summed over ranks (themselves on one process), in one small collective."""
    if not ranks.enabled:
        return [float(v) for v in values]
    return ranks.all_reduce(torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)).tolist()
