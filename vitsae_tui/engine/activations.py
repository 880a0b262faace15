"""Hook-based activation collection into a sharded, resumable store (read it with `activation_store`).

A set is a folder of fixed-size `.npy` shards of [tokens, d_model] rows (memory-mappable), one thumbnail and
concept-map file per shard, and `manifest.json`. A shard is listed in the manifest only after all of its files
are on disk, so a killed collection resumes after the last complete shard.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.activation_store import MANIFEST_VERSION, StoreError, validate_manifest
from vitsae_tui.engine.config import CollectConfig, DataConfig
from vitsae_tui.engine.data import ImageDataset, iterate_batches, load_dataset, normalize
from vitsae_tui.engine.device import autocast, pick_device
from vitsae_tui.engine.errors import StageError, stage_failed
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
from vitsae_tui.engine.train_model import load_model
from vitsae_tui.engine.workspace import (
    RUN_NAME,
    Workspace,
    WorkspaceError,
    atomic_save_npy,
    atomic_write_json,
    read_json,
    refuse_if_owned,
    remove_partial_writes,
    write_status,
)

STAGE = "collect"
THUMB_SIZE = 112  # a 2x box filter of the 224 model input: the cheapest good downscale, sharp enough for PNG cards
PROGRESS_EVERY_S = 0.25


def default_set_name(cfg: CollectConfig, hook: str) -> str:
    """Deterministic from the arguments, so re-running the same command finds (and resumes) the same set."""
    dataset = cfg.data.dataset
    if dataset == "imagenette":
        dataset = f"imagenette-{cfg.data.imagenette_size}"
    elif dataset != "synthetic":
        base = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(dataset).expanduser().resolve().name)[:16] or "folder"
        dataset = f"{base}-{hashlib.sha1(str(Path(dataset).expanduser().resolve()).encode()).hexdigest()[:6]}"
    name = f"{cfg.model}.{hook}.{dataset}.{cfg.split}" + (f".n{cfg.limit}" if cfg.limit else "")
    if cfg.checkpoint != "best":
        name += f".{cfg.checkpoint}"
    if len(name) > 64:
        name = name[:55] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def _provenance(cfg: CollectConfig, data: DataConfig, model_sha: str, hook: str) -> dict[str, Any]:
    return {
        "model_run": cfg.model,
        "checkpoint": cfg.checkpoint,
        "checkpoint_sha256": model_sha,
        "hook": hook,
        "data": config_mod.to_dict(data),
        "split": cfg.split,
        "limit": cfg.limit,
        "dtype": cfg.dtype,
        "shard_images": cfg.shard_images,
    }


def _check_provenance(existing: dict[str, Any], wanted: dict[str, Any], name: str) -> None:
    for key, value in wanted.items():
        if existing.get(key) != value:
            if key == "checkpoint_sha256":
                raise StoreError(
                    f"activations/{name} was collected from a different {wanted['checkpoint']} checkpoint of "
                    f"models/{wanted['model_run']} ({str(existing.get(key))[:12]} vs now {value[:12]}); "
                    "pass --name to collect a new set, or delete the old one"
                )
            raise StoreError(
                f"activations/{name} was collected with {key}={existing.get(key)!r}, not {value!r}; "
                "pass --name to collect a new set, or delete the old one"
            )


def select_images(n_available: int, limit: int) -> np.ndarray:
    """All images, or a seeded random subset of `limit` (in dataset order, for locality)."""
    if not limit or limit >= n_available:
        return np.arange(n_available)
    return np.sort(np.random.default_rng(0).permutation(n_available)[:limit])


def make_thumbnails(images_u8: torch.Tensor) -> np.ndarray:
    """(B, 3, 224, 224) uint8 -> (B, 112, 112, 3) uint8 by 2x2 box averaging (PIL, single-threaded, GIL released)."""
    from PIL import Image

    pixels = images_u8.permute(0, 2, 3, 1).numpy()
    factor = pixels.shape[1] // THUMB_SIZE
    return np.stack([np.asarray(Image.fromarray(p).reduce(factor)) for p in pixels])


class _ShardWriter:
    """A thread that writes batches into the current shard's temporary memmap and seals shards atomically.

    The forward pass only enqueues; writing, thumbnails and statistics overlap the next batches' compute.
    """

    def __init__(self, set_dir: Path, manifest: dict[str, Any], tokens_per_image: int, d_model: int, dtype: str):
        self.set_dir = set_dir
        self.manifest = manifest
        self.tokens_per_image = tokens_per_image
        self.d_model = d_model
        self.dtype = np.dtype(dtype)
        self.queue: queue.Queue = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.bytes_written = 0
        self.thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
        self.thread.start()

    def put(self, item: tuple) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self.put(("close",))
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        shard: dict[str, Any] | None = None
        try:
            while True:
                item = self.queue.get()
                if item[0] == "close":
                    return
                if item[0] == "open":
                    shard = self._open(*item[1:])
                elif item[0] == "batch":
                    self._write_batch(shard, *item[1:])
                elif item[0] == "seal":
                    self._seal(shard, *item[1:])
                    shard = None
        except BaseException as e:  # surfaced to the collecting thread on its next put
            self.error = e
            while True:  # keep draining so the producer never blocks forever
                try:
                    if self.queue.get(timeout=0.1)[0] == "close":
                        return
                except queue.Empty:
                    pass

    def _open(self, index: int, n_images: int) -> dict[str, Any]:
        stem = f"shard-{index:05d}"
        rows = n_images * self.tokens_per_image
        acts_tmp = self.set_dir / f".{stem}.npy.tmp"
        thumbs_tmp = self.set_dir / f".{stem}.thumbs.npy.tmp"
        return {
            "index": index,
            "stem": stem,
            "acts_tmp": acts_tmp,
            "thumbs_tmp": thumbs_tmp,
            "acts": _allocated_memmap(acts_tmp, self.dtype, (rows, self.d_model)),
            "thumbs": _allocated_memmap(thumbs_tmp, np.uint8, (n_images, THUMB_SIZE, THUMB_SIZE, 3)),
            "images": [],
            "concepts": [],
            "filled": 0,
            "sum": np.zeros(self.d_model, dtype=np.float64),
            "sumsq": np.zeros(self.d_model, dtype=np.float64),
        }

    def _write_batch(
        self, shard, acts: np.ndarray, images_u8: torch.Tensor, table: list[dict], concepts: np.ndarray | None
    ) -> None:
        n = acts.shape[0]  # acts: (n_images, tokens, d) float32; statistics are of the stored (rounded) values
        start = shard["filled"]
        rows = acts.reshape(-1, self.d_model)
        shard["acts"][start * self.tokens_per_image : (start + n) * self.tokens_per_image] = rows
        shard["thumbs"][start : start + n] = make_thumbnails(images_u8)
        as64 = shard["acts"][start * self.tokens_per_image : (start + n) * self.tokens_per_image].astype(np.float64)
        shard["sum"] += as64.sum(0)
        shard["sumsq"] += np.square(as64).sum(0)
        shard["images"].extend(table)
        if concepts is not None:
            shard["concepts"].append(concepts)
        shard["filled"] = start + n

    def _seal(self, shard, selected_end: int, skipped: int) -> None:
        stem = shard["stem"]
        n_images = shard["filled"]
        files = {"acts": f"{stem}.npy", "thumbs": f"{stem}.thumbs.npy"}
        for key, tmp, n in (
            ("acts", shard["acts_tmp"], n_images * self.tokens_per_image),
            ("thumbs", shard["thumbs_tmp"], n_images),
        ):
            array = shard.pop(key)
            if len(array) != n:  # unreadable images left the planned shard short: store exactly what was filled
                atomic_save_npy(self.set_dir / files[key], np.array(array[:n]))
                del array
                os.unlink(tmp)
                continue
            array.flush()
            del array  # closes the memmap
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.set_dir / files[key])
        if shard["concepts"]:
            files["concepts"] = f"{stem}.concepts.npy"
            atomic_save_npy(self.set_dir / files["concepts"], np.concatenate(shard["concepts"]))
        shards = self.manifest["shards"]
        row_start = shards[-1]["rows"][1] if shards else 0
        image_start = shards[-1]["images"][1] if shards else 0
        shards.append(
            {
                "files": files,
                "rows": [row_start, row_start + n_images * self.tokens_per_image],
                "images": [image_start, image_start + n_images],
                "selected_end": selected_end,
                "skipped": skipped,
                "sum": shard["sum"].tolist(),
                "sumsq": shard["sumsq"].tolist(),
            }
        )
        self.manifest["images"].extend(shard["images"])
        _update_totals(self.manifest)
        # the manifest names the shard only now that every file of it is complete on disk
        atomic_write_json(self.set_dir / "manifest.json", self.manifest)
        self.bytes_written += sum((self.set_dir / f).stat().st_size for f in files.values())


def _update_totals(manifest: dict[str, Any]) -> None:
    shards = manifest["shards"]
    manifest["n_images"] = shards[-1]["images"][1] if shards else 0
    manifest["n_tokens"] = shards[-1]["rows"][1] if shards else 0
    manifest["skipped_images"] = sum(s["skipped"] for s in shards)
    if manifest["n_tokens"]:
        total = np.sum([s["sum"] for s in shards], axis=0)
        total_sq = np.sum([s["sumsq"] for s in shards], axis=0)
        mean = total / manifest["n_tokens"]
        manifest["mean"] = mean.tolist()
        manifest["var"] = np.maximum(total_sq / manifest["n_tokens"] - mean**2, 0.0).tolist()


@dataclass(frozen=True)
class CollectResult:
    set_dir: Path
    n_images: int
    n_tokens: int
    bytes_on_disk: int
    stopped: bool


def collect(cfg: CollectConfig, ws: Workspace, report: Report, stop: threading.Event) -> CollectResult:
    """Collect (or resume collecting) an activation set in `activations/`; raises StageError with a user message."""
    set_dir: Path | None = None
    try:
        if not cfg.model:
            raise StageError("no model run given; pass --model RUN (see `vitsae-tui runs`)")
        device = pick_device(cfg.device)
        loaded = load_model(ws, cfg.model, cfg.checkpoint, device)
        model = loaded.model
        hook = cfg.hook or _default_hook(loaded)
        model.hook_module(hook)
        data = loaded.config.data if cfg.data.dataset == loaded.config.data.dataset == "synthetic" else cfg.data
        name = cfg.name or default_set_name(cfg, hook)
        if not RUN_NAME.match(name):
            raise StageError(f"{name!r} cannot name an activation set; use letters, digits, '.', '_' or '-'")
        target = ws.kind_dir("activations") / name
        if (target / "manifest.json").exists():
            refuse_if_owned(target)  # before set_dir is set: a refusal must not touch the owner's status
        set_dir = target
        wanted = _provenance(cfg, data, loaded.checkpoint_sha256, hook)
        manifest = _open_or_create(set_dir, name, wanted, loaded, hook)
        return _collect(cfg, ws, data, model, hook, device, set_dir, manifest, report, stop)
    except (StageError, StoreError, WorkspaceError, config_mod.ConfigError, RuntimeError, OSError, ValueError) as e:
        raise stage_failed(STAGE, e, report, set_dir) from e


def _default_hook(loaded) -> str:
    from vitsae_tui.engine.vision_model import default_hook

    return default_hook(loaded.config.model)


def _open_or_create(set_dir: Path, name: str, wanted: dict[str, Any], loaded, hook: str) -> dict[str, Any]:
    if (set_dir / "manifest.json").exists():
        manifest = validate_manifest(read_json(set_dir / "manifest.json"), set_dir)
        _check_provenance(manifest["provenance"], wanted, name)
        return manifest
    set_dir.mkdir(parents=True, exist_ok=True)
    cfg = loaded.config.model
    manifest = {
        "version": MANIFEST_VERSION,
        "name": name,
        "provenance": wanted,
        "model_preset": loaded.config.preset,
        "hook": hook,
        "d_model": cfg.n_embd,
        "grid": [cfg.grid_size, cfg.grid_size],
        "tokens_per_image": cfg.n_tokens,
        "dtype": wanted["dtype"],
        "thumb_size": THUMB_SIZE,
        "class_names": list(loaded.class_names),
        "concept_names": [],
        "n_images_planned": 0,
        "n_images": 0,
        "n_tokens": 0,
        "skipped_images": 0,
        "shards": [],
        "images": [],
        "mean": None,
        "var": None,
        "complete": False,
    }
    atomic_write_json(set_dir / "manifest.json", manifest)
    return manifest


def _collect(cfg, ws, data, model, hook, device, set_dir, manifest, report, stop) -> CollectResult:
    report(Started(STAGE, str(set_dir), config_mod.to_dict(cfg)))
    dataset: ImageDataset = load_dataset(ws, data, cfg.split, progress_callback(report, STAGE, "images drawn"))
    selected = select_images(len(dataset), cfg.limit)
    if len(selected) == 0:
        raise StageError(f"{data.dataset} ({cfg.split}) has no images to collect; pick another dataset or split")
    manifest["n_images_planned"] = int(len(selected))
    manifest["concept_names"] = list(dataset.concept_names)
    if not manifest["class_names"]:
        manifest["class_names"] = list(dataset.class_names)
    concept_maps = dataset.concept_maps()
    name = set_dir.name
    if manifest["complete"]:
        report(Log(STAGE, f"activations/{name} is already complete: {manifest['n_tokens']} tokens"))
        report(Finished(STAGE, str(set_dir), _summary(manifest, set_dir)))
        return CollectResult(set_dir, manifest["n_images"], manifest["n_tokens"], _size_on_disk(set_dir), False)

    start_position = manifest["shards"][-1]["selected_end"] if manifest["shards"] else 0
    remove_partial_writes(set_dir)  # the half-written shard of a killed run
    if start_position:
        report(
            Log(
                STAGE,
                f"resuming activations/{name} after {len(manifest['shards'])} complete shard(s), "
                f"{manifest['n_images']} images",
            )
        )
    write_status(set_dir, "running", message="")
    report(ArtifactWritten(STAGE, str(set_dir), "activation set (collecting)"))
    report(
        Log(
            STAGE,
            f"collecting {hook} of models/{manifest['provenance']['model_run']} on {device}: "
            f"{len(selected)} {data.dataset} images → activations/{name}",
        )
    )

    tokens_per_image = manifest["tokens_per_image"]
    writer = _ShardWriter(set_dir, manifest, tokens_per_image, manifest["d_model"], cfg.dtype)
    meter = RateMeter()
    last_progress = 0.0
    images_done = manifest["n_images"]
    position = shard_start = start_position  # positions index `selected`
    shard_index = len(manifest["shards"])
    in_shard = 0
    bad_positions: list[int] = []
    stopped = False

    def seal(end: int) -> None:
        skipped = sum(1 for p in bad_positions if shard_start <= p < end)
        writer.put(("seal", end, skipped))

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
                        writer.put(("open", shard_index, min(cfg.shard_images, len(selected) - int(positions[0]))))
                    take = min(len(images), cfg.shard_images - in_shard)
                    acts = _forward(model, images[:take], hook, device, cfg.bf16)
                    indices = selected[positions[:take]]
                    table = [
                        {"source": dataset.source(int(i)), "label": int(l), "index": int(i)}
                        for i, l in zip(indices, labels[:take])
                    ]
                    concepts = concept_maps[indices] if concept_maps is not None else None
                    writer.put(("batch", acts, images[:take], table, concepts))
                    images, labels, positions = images[take:], labels[take:], positions[take:]
                    in_shard += take
                    images_done += take
                    if in_shard == cfg.shard_images:
                        end = int(positions[0]) if len(positions) else position
                        seal(end)
                        shard_start, shard_index, in_shard = end, shard_index + 1, 0
                now = time.perf_counter()
                if now - last_progress >= PROGRESS_EVERY_S:
                    last_progress = now
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
        # the partial shard is dropped; a re-run redoes at most those images
        remove_partial_writes(set_dir)
    manifest = validate_manifest(read_json(set_dir / "manifest.json"), set_dir)
    if not stopped:
        sealed_end = manifest["shards"][-1]["selected_end"] if manifest["shards"] else 0
        manifest["skipped_images"] += sum(
            1 for p in bad_positions if p >= sealed_end
        )  # unreadable ones after the last shard
        if manifest["n_images"] == 0:
            raise StageError(
                f"none of the {len(selected)} images of {data.dataset} ({cfg.split}) could be decoded; "
                f"check that the folder holds readable JPEG/PNG files"
            )
        manifest["complete"] = True
        atomic_write_json(set_dir / "manifest.json", manifest)
    summary = _summary(manifest, set_dir)
    if manifest["skipped_images"]:
        report(Log(STAGE, f"skipped {manifest['skipped_images']} unreadable images", "warning"))
    write_status(set_dir, "stopped" if stopped else "finished", **summary, message="")
    report(Progress(STAGE, images_done, len(selected), "images", meter.elapsed_s, 0.0))
    report(ArtifactWritten(STAGE, str(set_dir / "manifest.json"), "activation set"))
    report(Finished(STAGE, str(set_dir), summary, stopped))
    return CollectResult(set_dir, manifest["n_images"], manifest["n_tokens"], summary["bytes_on_disk"], stopped)


def _allocated_memmap(path: Path, dtype, shape: tuple[int, ...]) -> np.memmap:
    """A writable .npy memmap whose blocks are reserved now: a full disk raises ENOSPC here, not SIGBUS mid-write."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # file systems without fallocate keep sparse files
                raise
        finally:
            os.close(fd)
    return array


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


def _size_on_disk(set_dir: Path) -> int:
    return sum(p.stat().st_size for p in set_dir.iterdir() if p.is_file())


def _summary(manifest: dict[str, Any], set_dir: Path) -> dict[str, Any]:
    return {
        "images": manifest["n_images"],
        "tokens": manifest["n_tokens"],
        "d_model": manifest["d_model"],
        "dtype": manifest["dtype"],
        "shards": len(manifest["shards"]),
        "skipped_images": manifest["skipped_images"],
        "bytes_on_disk": _size_on_disk(set_dir),
    }
