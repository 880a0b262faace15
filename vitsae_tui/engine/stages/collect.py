"""Stage collect: record a hook point's activations into an activation set, resumably (see `activation_set`).

A shard is listed in the set's manifest only after all of its files are on disk, so a killed collection resumes
after the last complete shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitsae_tui.engine import activation_set, metrics, model_run
from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.activation_set import ImageEntry, Manifest, Provenance, ShardWriter
from vitsae_tui.engine.config import CollectConfig, DataConfig
from vitsae_tui.engine.data import ImageDataset, iterate_batches, load_dataset, normalize
from vitsae_tui.engine.device import autocast, pick_device
from vitsae_tui.engine.errors import StageError, StopRequested, check_stop
from vitsae_tui.engine.events import Report
from vitsae_tui.engine.stages.run import RunRecorder, StageResult, recording
from vitsae_tui.engine.workspace import RUN_NAME, Workspace, remove_partial_writes

STAGE = "collect"
THUMB_BYTES = activation_set.THUMB_SIZE * activation_set.THUMB_SIZE * 3


def default_set_name(cfg: CollectConfig, hook: str, data: DataConfig) -> str:
    """Deterministic from the arguments and the data they resolve to, so re-running the same command finds (and
    resumes) the same set."""
    dataset = data.dataset
    if dataset == "imagenette":
        dataset = f"imagenette-{data.imagenette_size}"
    elif data.is_folder:
        base = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(dataset).name)[:16] or "folder"
        dataset = f"{base}-{hashlib.sha1(dataset.encode()).hexdigest()[:6]}"
    name = f"{cfg.model}.{hook}.{dataset}.{cfg.split}" + (f".n{cfg.limit}" if cfg.limit else "")
    if cfg.checkpoint != "best":
        name += f".{cfg.checkpoint}"
    if len(name) > 64:
        name = name[:55] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def _provenance(cfg: CollectConfig, data: DataConfig, model_sha: str, hook: str) -> Provenance:
    return Provenance(
        model_run=cfg.model,
        checkpoint=cfg.checkpoint,
        checkpoint_sha256=model_sha,
        hook=hook,
        data=data,
        split=cfg.split,
        limit=cfg.limit,
        dtype=cfg.dtype,
        shard_images=cfg.shard_images,
    )


def select_images(n_available: int, limit: int) -> np.ndarray:
    """All images, or a seeded random subset of `limit` (in dataset order, for locality)."""
    if not limit or limit >= n_available:
        return np.arange(n_available)
    return np.sort(np.random.default_rng(0).permutation(n_available)[:limit])


@dataclass(frozen=True)
class CollectResult(StageResult):
    n_images: int
    n_tokens: int
    bytes_on_disk: int


@dataclass(frozen=True)
class _Collection:
    """Everything one collection needs, resolved from the config before anything is written."""

    cfg: CollectConfig
    data: DataConfig
    model: torch.nn.Module
    hook: str
    device: torch.device
    set_dir: Path
    fits_probe: bool
    """a headless backbone: a labelled train split gives it a linear probe over its pooled features"""


def run(cfg: CollectConfig, ws: Workspace, report: Report, stop: threading.Event) -> CollectResult:
    """Collect (or resume collecting) an activation set in `activations/`; raises StageError with a user message."""
    with recording(STAGE, report, stop) as rec:
        if not cfg.model:
            raise StageError("no model run given; pass --model RUN (see `vitsae-tui runs`)")
        device = pick_device(cfg.device)
        loaded = model_run.load_model(ws, cfg.model, cfg.checkpoint, device)
        hook = cfg.hook or loaded.default_hook
        layout = loaded.model.token_layout(hook)
        if layout.grid[0] != layout.grid[1]:
            raise StageError(f"{hook} has a {layout.grid[0]}x{layout.grid[1]} grid; only square token grids are stored")
        data = cfg.data.following(loaded.data)
        name = cfg.name or default_set_name(cfg, hook, data)
        if not RUN_NAME.match(name):
            raise StageError(f"{name!r} cannot name an activation set; use letters, digits, '.', '_' or '-'")
        # claimed before the recorder knows the folder: a refusal must not touch the owner's status
        rec.run_dir = rec.claim(ws.kind_dir("activations") / name)
        manifest = activation_set.open_or_create(
            rec.run_dir,
            _provenance(cfg, data, loaded.checkpoint_sha256, hook),
            loaded.label,
            _width(loaded.model, hook, device),
            layout.grid,
            [],  # named by its own dataset's classes once the dataset is loaded, never by the model's
            layout.special,
        )
        rec.started(config_mod.to_dict(cfg))
        job = _Collection(cfg, data, loaded.model, hook, device, rec.run_dir, not loaded.has_head)
        return _collect(job, ws, manifest, rec)


@torch.inference_mode()
def _width(model, hook: str, device) -> int:
    """The width d of the tokens at `hook`, from one blank image."""
    size = model.preprocess.size
    return int(model.run_to(torch.zeros(1, 3, size, size, device=device), hook).shape[-1])


def _collect(job: _Collection, ws: Workspace, manifest: Manifest, rec: RunRecorder) -> CollectResult:
    cfg, data, set_dir = job.cfg, job.data, job.set_dir
    try:
        dataset: ImageDataset = load_dataset(
            ws, data, cfg.split, rec.sub_progress("images drawn"), rec.stop, job.model.preprocess
        )
        # synthetic maps rasterised at this model's grid: the same objects drawn again at 14x14, 7x7, …
        concept_maps = dataset.concept_maps_at(manifest.grid[0], rec.sub_progress("concept maps drawn"), rec.stop)
    except StopRequested:  # while the synthetic images were drawn: nothing collected yet, the same command starts it
        return _finish(manifest, rec, 0, True)
    selected = select_images(len(dataset), cfg.limit)
    if len(selected) == 0:
        raise StageError(f"{data.dataset} ({cfg.split}) has no images to collect; pick another dataset or split")
    manifest = dataclasses.replace(
        manifest,
        n_images_planned=int(len(selected)),
        concept_names=tuple(dataset.concept_names),
        class_names=tuple(dataset.class_names),
    )
    if manifest.complete:
        rec.log(f"activations/{set_dir.name} is already complete: {manifest.n_tokens} tokens")
        fitted = _wants_probe(job) and _fit_probe(job, rec)  # a stop came while its probe was fit: fit it now
        rec.finished(_summary(manifest, set_dir), status=fitted)
        return _result(manifest, set_dir, False)
    start = manifest.shards[-1].selected_end if manifest.shards else 0
    remove_partial_writes(set_dir)  # the half-written shard of a killed run
    if start:
        rec.log(
            f"resuming activations/{set_dir.name} after {len(manifest.shards)} complete shard(s), "
            f"{manifest.n_images} images"
        )
    rec.status("running", message="")
    rec.artifact(set_dir, "activation set (collecting)")
    rec.log(
        f"collecting {job.hook} of models/{manifest.provenance.model_run} on {job.device}: "
        f"{len(selected)} {data.dataset} images → activations/{set_dir.name}"
    )
    rec.log(_size_line(manifest, len(selected), len(dataset)))
    shards = _ShardLoop(job, dataset, concept_maps, selected, manifest, rec)
    stopped = shards.write(start)
    if stopped:
        remove_partial_writes(set_dir)  # the partial shard is dropped; a re-run redoes at most those images
    manifest = Manifest.load(set_dir)
    if not stopped:
        sealed_end = manifest.shards[-1].selected_end if manifest.shards else 0
        if manifest.n_images == 0:
            raise StageError(
                f"none of the {len(selected)} images of {data.dataset} ({cfg.split}) could be decoded; "
                f"check that the folder holds readable JPEG/PNG files"
            )
        # unreadable images after the last shard count as skipped too
        manifest = activation_set.mark_complete(set_dir, manifest, shards.bad_after(sealed_end))
        if _wants_probe(job):
            _fit_probe(job, rec)
    return _finish(manifest, rec, len(selected), stopped)


def _wants_probe(job: _Collection) -> bool:
    from vitsae_tui.engine.activation_set.probe import PROBE_INFO

    return job.fits_probe and job.cfg.split != "val" and not (job.set_dir / PROBE_INFO).exists()


def _pooled_features(job: _Collection, store, images: np.ndarray, rec: RunRecorder) -> torch.Tensor:
    """(n, D) pooled last-layer features of the images, run on from the stored hook activations."""
    progress, features = rec.sub_progress("images (probe features)"), []
    with torch.inference_mode():
        for start in range(0, len(images), 64):
            check_stop(rec.stop)
            progress(start, len(images))
            ids = images[start : start + 64]
            acts = torch.from_numpy(np.stack([store.image(int(i)) for i in ids]).astype(np.float32))
            prefix = store.prefixes(ids)
            prefix = torch.from_numpy(prefix.astype(np.float32)).to(job.device) if prefix is not None else None
            features.append(job.model.run_from(job.hook, acts.to(job.device), prefix).float().cpu())
    return torch.cat(features)


def _size_line(manifest: Manifest, n_selected: int, n_dataset: int) -> str:
    """What each image costs on disk and what this collection (and the whole dataset) will take, before it starts."""
    from vitsae_tui.engine.text import format_bytes

    tokens = manifest.tokens_per_image + len(manifest.special)
    per_image = tokens * manifest.d_model * np.dtype(manifest.dtype).itemsize + THUMB_BYTES
    whole = "" if n_selected == n_dataset else f"; all {n_dataset:,} images: {format_bytes(per_image * n_dataset)}"
    return (
        f"{tokens} tokens x {manifest.d_model} in {manifest.dtype} + a thumbnail = {format_bytes(per_image)} per "
        f"image: {format_bytes(per_image * n_selected)} for {n_selected:,} images{whole} (--limit N and --dtype "
        f"float16 bound it)"
    )


def _fit_probe(job: _Collection, rec: RunRecorder) -> bool:
    """A linear probe on the pooled last-layer features of the set's labelled images, run on from the stored hook;
    whether one was fit."""
    from vitsae_tui.engine.activation_set.probe import ProbeInfo, write_probe
    from vitsae_tui.engine.models.probe import fit_probe

    store = activation_set.ActivationSet(job.set_dir)
    labels = store.labels()
    labelled = np.flatnonzero(labels >= 0)
    if len(store.class_names) < 2 or len(labelled) < 2:
        rec.log("no linear probe: the images are unlabelled, so this headless model has no class logits", "warning")
        return False
    rec.log(f"the model has no classification head: fitting a linear probe on {len(labelled)} labelled images")
    try:
        features = _pooled_features(job, store, labelled, rec)
    except StopRequested:  # the set itself is complete: only the probe waits for the same command again
        rec.log("stopped before the linear probe was fit; run the same collect command again to fit it", "warning")
        return False
    fit = fit_probe(features, labels[labelled], len(store.class_names))
    sha256 = store.provenance.checkpoint_sha256
    info = ProbeInfo(tuple(store.class_names), sha256, fit.train_accuracy, fit.val_accuracy, fit.n_train, fit.n_val)
    write_probe(job.set_dir, fit.weight, fit.bias, info)
    rec.log(
        f"linear probe: {fit.val_accuracy:.1%} accuracy on {fit.n_val} held-out images (every 10th; "
        f"{fit.train_accuracy:.1%} on the {fit.n_train} it was fit on)"
    )
    return True


class _ShardLoop:
    """The forward passes of one collection, written shard by shard; a shard is sealed once all its files are on
    disk, so a killed run resumes after the last sealed one."""

    def __init__(
        self,
        job: _Collection,
        dataset: ImageDataset,
        concept_maps: np.ndarray | None,
        selected: np.ndarray,
        manifest: Manifest,
        rec: RunRecorder,
    ):
        self.job, self.dataset, self.selected, self.rec = job, dataset, selected, rec
        self.writer = ShardWriter(job.set_dir, manifest)
        self.images_before = manifest.n_images
        self.shard_index, self.in_shard, self.shard_start = len(manifest.shards), 0, 0
        self.bad_positions: list[int] = []  # positions index `selected`
        self.concept_maps = concept_maps
        self.n_special = len(manifest.special)

    def write(self, start: int) -> bool:
        """Every selected image from position `start` on; True when a stop was asked for."""
        cfg, rec = self.job.cfg, self.rec
        position = self.shard_start = start
        try:
            with torch.inference_mode():
                for images, labels, ok in iterate_batches(self.dataset, self.selected[start:], cfg.batch_size):
                    positions = np.arange(position, position + len(images))
                    position += len(images)
                    ok_np = ok.numpy()
                    self.bad_positions.extend(positions[~ok_np].tolist())
                    self._add(images[ok], labels[ok], positions[ok_np], position)
                    done = self.images_before + self.writer.images_written
                    rec.progress(done, len(self.selected), "images")
                    if rec.stop.is_set():
                        return True
            if self.in_shard:
                self._seal(position)
            return False
        finally:
            self.writer.close()

    def _add(self, images: torch.Tensor, labels: torch.Tensor, positions: np.ndarray, position: int) -> None:
        """Forward a batch's readable images into the open shard, sealing each shard as it fills."""
        cfg, job = self.job.cfg, self.job
        while len(images):
            if self.in_shard == 0:
                self.writer.open(self.shard_index, min(cfg.shard_images, len(self.selected) - int(positions[0])))
            take = min(len(images), cfg.shard_images - self.in_shard)
            acts = _forward(job.model, images[:take], job.hook, job.device, cfg.bf16)
            specials, acts = (acts[:, : self.n_special], acts[:, self.n_special :]) if self.n_special else (None, acts)
            indices = self.selected[positions[:take]]
            entries = [
                ImageEntry(source=self.dataset.source(int(i)), label=int(label), index=int(i))
                for i, label in zip(indices, labels[:take])
            ]
            concepts = self.concept_maps[indices] if self.concept_maps is not None else None
            self.writer.write(acts, images[:take], entries, concepts, specials)
            images, labels, positions = images[take:], labels[take:], positions[take:]
            self.in_shard += take
            if self.in_shard == cfg.shard_images:
                end = int(positions[0]) if len(positions) else position
                self._seal(end)
                self.shard_start, self.shard_index, self.in_shard = end, self.shard_index + 1, 0

    def _seal(self, end: int) -> None:
        self.writer.seal(end, sum(1 for p in self.bad_positions if self.shard_start <= p < end))

    def bad_after(self, position: int) -> int:
        return sum(1 for p in self.bad_positions if p >= position)


def _finish(manifest: Manifest, rec: RunRecorder, planned: int, stopped: bool) -> CollectResult:
    set_dir = rec.run_dir
    summary = _summary(manifest, set_dir)
    if planned:
        if manifest.skipped_images:
            rec.log(f"skipped {manifest.skipped_images} unreadable images", "warning")
        rec.progress(manifest.n_images, planned, "images", final=True)
        rec.artifact(set_dir / activation_set.MANIFEST, "activation set")
    rec.finished(summary, stopped)
    return _result(manifest, set_dir, stopped)


def _result(manifest: Manifest, set_dir: Path, stopped: bool) -> CollectResult:
    return CollectResult(set_dir, stopped, manifest.n_images, manifest.n_tokens, activation_set.size_on_disk(set_dir))


def _forward(model, images_u8: torch.Tensor, hook: str, device, bf16: bool) -> np.ndarray:
    with autocast(device, bf16):
        acts = model.run_to(normalize(images_u8.to(device, non_blocking=True), model.preprocess), hook)  # (B, T, d)
    acts = acts.float().cpu().numpy()
    if not np.isfinite(acts).all():
        raise StageError(
            f"the model produced NaN or infinite activations at {hook}; nothing non-finite is stored: "
            f"collect from another checkpoint or retrain the model"
        )
    return acts


def _summary(manifest: Manifest, set_dir: Path) -> dict[str, Any]:
    return {
        metrics.IMAGES.key: manifest.n_images,
        metrics.TOKENS.key: manifest.n_tokens,
        metrics.D_MODEL.key: manifest.d_model,
        metrics.DTYPE.key: manifest.dtype,
        metrics.SHARDS.key: len(manifest.shards),
        metrics.SKIPPED_IMAGES.key: manifest.skipped_images,
        metrics.BYTES_ON_DISK.key: activation_set.size_on_disk(set_dir),
        **_probe_summary(set_dir),
    }


def _probe_summary(set_dir: Path) -> dict[str, Any]:
    from vitsae_tui.engine.activation_set.probe import read_probe

    probe = read_probe(set_dir)
    return {metrics.PROBE_VAL_ACCURACY.key: probe[2].val_accuracy} if probe is not None else {}
