"""Stage collect: record a hook point's activations into an activation set, resumably (see `activation_set`).

A shard is listed in the set's manifest only after all of its files are on disk, so a killed collection resumes
after the last complete shard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitsae_tui.engine import activation_set, model_run
from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.activation_set import ImageEntry, Manifest, Provenance, ShardWriter
from vitsae_tui.engine.config import CollectConfig, DataConfig
from vitsae_tui.engine.data import ImageDataset, iterate_batches, load_dataset, normalize
from vitsae_tui.engine.device import autocast, pick_device
from vitsae_tui.engine.errors import StageError, StopRequested, stage_failed
from vitsae_tui.engine.events import (
    ArtifactWritten,
    Finished,
    Log,
    Progress,
    RateMeter,
    Report,
    Started,
    progress_callback,
)
from vitsae_tui.engine.workspace import RUN_NAME, Workspace, claim_run, remove_partial_writes, write_status

STAGE = "collect"
PROGRESS_EVERY_S = 0.25


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
class CollectResult:
    set_dir: Path
    n_images: int
    n_tokens: int
    bytes_on_disk: int
    stopped: bool


@dataclass(frozen=True)
class _Collection:
    """Everything one collection needs, resolved from the config before anything is written."""

    cfg: CollectConfig
    data: DataConfig
    model: torch.nn.Module
    hook: str
    device: torch.device
    set_dir: Path


def run(cfg: CollectConfig, ws: Workspace, report: Report, stop: threading.Event) -> CollectResult:
    """Collect (or resume collecting) an activation set in `activations/`; raises StageError with a user message."""
    set_dir: Path | None = None
    with contextlib.ExitStack() as held:  # the set's claim, held until the stage returns
        try:
            if not cfg.model:
                raise StageError("no model run given; pass --model RUN (see `vitsae-tui runs`)")
            device = pick_device(cfg.device)
            loaded = model_run.load_model(ws, cfg.model, cfg.checkpoint, device)
            hook = cfg.hook or _default_hook(loaded)
            loaded.model.hook_module(hook)
            data = cfg.data.following(loaded.config.data)
            name = cfg.name or default_set_name(cfg, hook, data)
            if not RUN_NAME.match(name):
                raise StageError(f"{name!r} cannot name an activation set; use letters, digits, '.', '_' or '-'")
            target = ws.kind_dir("activations") / name
            held.enter_context(claim_run(target))  # before set_dir is set: a refusal must not touch the owner's status
            set_dir = target
            model_cfg = loaded.config.model
            manifest = activation_set.open_or_create(
                set_dir,
                _provenance(cfg, data, loaded.checkpoint_sha256, hook),
                loaded.config.preset,
                model_cfg.n_embd,
                model_cfg.grid_size,
                [],  # named by its own dataset's classes once the dataset is loaded, never by the model's
            )
            job = _Collection(cfg, data, loaded.model, hook, device, set_dir)
            return _collect(job, ws, manifest, report, stop)
        except Exception as e:
            raise stage_failed(STAGE, e, report, set_dir) from e


def _default_hook(loaded) -> str:
    from vitsae_tui.engine.vision_model import default_hook

    return default_hook(loaded.config.model)


def _collect(job: _Collection, ws: Workspace, manifest: Manifest, report: Report, stop) -> CollectResult:
    cfg, data, set_dir = job.cfg, job.data, job.set_dir
    report(Started(STAGE, str(set_dir), config_mod.to_dict(cfg)))
    try:
        dataset: ImageDataset = load_dataset(
            ws, data, cfg.split, progress_callback(report, STAGE, "images drawn"), stop
        )
    except StopRequested:  # while the synthetic images were drawn: nothing collected yet, the same command starts it
        summary = _summary(manifest, set_dir)
        write_status(set_dir, "stopped", **summary, message="")
        report(Finished(STAGE, str(set_dir), summary, True))
        return CollectResult(set_dir, manifest.n_images, manifest.n_tokens, summary["bytes_on_disk"], True)
    selected = select_images(len(dataset), cfg.limit)
    if len(selected) == 0:
        raise StageError(f"{data.dataset} ({cfg.split}) has no images to collect; pick another dataset or split")
    manifest = dataclasses.replace(
        manifest,
        n_images_planned=int(len(selected)),
        concept_names=tuple(dataset.concept_names),
        class_names=tuple(dataset.class_names),
    )
    concept_maps = dataset.concept_maps()
    name = set_dir.name
    if manifest.complete:
        report(Log(STAGE, f"activations/{name} is already complete: {manifest.n_tokens} tokens"))
        report(Finished(STAGE, str(set_dir), _summary(manifest, set_dir)))
        return CollectResult(set_dir, manifest.n_images, manifest.n_tokens, activation_set.size_on_disk(set_dir), False)

    start_position = manifest.shards[-1].selected_end if manifest.shards else 0
    remove_partial_writes(set_dir)  # the half-written shard of a killed run
    if start_position:
        report(
            Log(
                STAGE,
                f"resuming activations/{name} after {len(manifest.shards)} complete shard(s), "
                f"{manifest.n_images} images",
            )
        )
    write_status(set_dir, "running", message="")
    report(ArtifactWritten(STAGE, str(set_dir), "activation set (collecting)"))
    report(
        Log(
            STAGE,
            f"collecting {job.hook} of models/{manifest.provenance.model_run} on {job.device}: "
            f"{len(selected)} {data.dataset} images → activations/{name}",
        )
    )

    writer = ShardWriter(set_dir, manifest)
    meter = RateMeter()
    last_progress = 0.0
    images_before = manifest.n_images
    position = shard_start = start_position  # positions index `selected`
    shard_index = len(manifest.shards)
    in_shard = 0
    bad_positions: list[int] = []
    stopped = False

    def seal(end: int) -> None:
        writer.seal(end, sum(1 for p in bad_positions if shard_start <= p < end))

    try:
        with torch.inference_mode():
            for images, labels, ok in iterate_batches(dataset, selected[start_position:], cfg.batch_size):
                positions = np.arange(position, position + len(images))
                position += len(images)
                ok_np = ok.numpy()
                bad_positions.extend(positions[~ok_np].tolist())
                images, labels, positions = images[ok], labels[ok], positions[ok_np]
                while len(images):
                    if in_shard == 0:
                        writer.open(shard_index, min(cfg.shard_images, len(selected) - int(positions[0])))
                    take = min(len(images), cfg.shard_images - in_shard)
                    acts = _forward(job.model, images[:take], job.hook, job.device, cfg.bf16)
                    indices = selected[positions[:take]]
                    entries = [
                        ImageEntry(source=dataset.source(int(i)), label=int(label), index=int(i))
                        for i, label in zip(indices, labels[:take])
                    ]
                    concepts = concept_maps[indices] if concept_maps is not None else None
                    writer.write(acts, images[:take], entries, concepts)
                    images, labels, positions = images[take:], labels[take:], positions[take:]
                    in_shard += take
                    if in_shard == cfg.shard_images:
                        end = int(positions[0]) if len(positions) else position
                        seal(end)
                        shard_start, shard_index, in_shard = end, shard_index + 1, 0
                now = time.perf_counter()
                if now - last_progress >= PROGRESS_EVERY_S:
                    last_progress = now
                    images_done = images_before + writer.images_written
                    report(
                        Progress(
                            STAGE, images_done, len(selected), "images", meter.elapsed_s, meter.update(images_done)
                        )
                    )
                if stop.is_set():
                    stopped = True
                    break
        if in_shard and not stopped:
            seal(position)
    finally:
        writer.close()

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
        manifest = activation_set.mark_complete(set_dir, manifest, sum(1 for p in bad_positions if p >= sealed_end))
    summary = _summary(manifest, set_dir)
    if manifest.skipped_images:
        report(Log(STAGE, f"skipped {manifest.skipped_images} unreadable images", "warning"))
    write_status(set_dir, "stopped" if stopped else "finished", **summary, message="")
    report(Progress(STAGE, manifest.n_images, len(selected), "images", meter.elapsed_s, 0.0))
    report(ArtifactWritten(STAGE, str(set_dir / activation_set.MANIFEST), "activation set"))
    report(Finished(STAGE, str(set_dir), summary, stopped))
    return CollectResult(set_dir, manifest.n_images, manifest.n_tokens, summary["bytes_on_disk"], stopped)


def _forward(model, images_u8: torch.Tensor, hook: str, device, bf16: bool) -> np.ndarray:
    with autocast(device, bf16):
        acts = model.run_to(normalize(images_u8.to(device, non_blocking=True)), hook)  # (B, T, d)
    acts = acts.float().cpu().numpy()
    if not np.isfinite(acts).all():
        raise StageError(
            f"the model produced NaN or infinite activations at {hook}; nothing non-finite is stored: "
            f"collect from another checkpoint or retrain the model"
        )
    return acts


def _summary(manifest: Manifest, set_dir: Path) -> dict[str, Any]:
    return {
        "images": manifest.n_images,
        "tokens": manifest.n_tokens,
        "d_model": manifest.d_model,
        "dtype": manifest.dtype,
        "shards": len(manifest.shards),
        "skipped_images": manifest.skipped_images,
        "bytes_on_disk": activation_set.size_on_disk(set_dir),
    }
