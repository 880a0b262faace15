"""Writing an activation set: shards filled by a writer thread and sealed atomically, then named in the manifest."""

from __future__ import annotations

import dataclasses
import errno
import os
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitsae_tui.engine.activation_set.manifest import (
    MANIFEST,
    THUMB_SIZE,
    ImageEntry,
    Manifest,
    Provenance,
    ShardEntry,
    check_provenance,
)
from vitsae_tui.engine.workspace import atomic_save_npy

if TYPE_CHECKING:
    import torch


def make_thumbnails(images_u8: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) uint8 -> (B, 112, 112, 3) uint8: box averaging when S is a multiple of 112 (224: 2x2), else an
    antialiased resize (PIL, single-threaded, GIL released)."""
    from PIL import Image

    pixels = images_u8.permute(0, 2, 3, 1).numpy()
    if pixels.shape[1] % THUMB_SIZE == 0:
        factor = pixels.shape[1] // THUMB_SIZE
        return np.stack([np.asarray(Image.fromarray(p).reduce(factor)) for p in pixels])
    return np.stack([np.asarray(Image.fromarray(p).resize((THUMB_SIZE, THUMB_SIZE), Image.BOX)) for p in pixels])


def open_or_create(
    set_dir: Path,
    provenance: Provenance,
    model_preset: str,
    d_model: int,
    grid: tuple[int, int],
    class_names: list[str],
    special: tuple[str, ...] = (),
) -> Manifest:
    """The manifest of the set to collect into: the existing one (same provenance only) or a new, empty one."""
    if (set_dir / MANIFEST).exists():
        manifest = Manifest.load(set_dir)
        check_provenance(manifest.provenance, provenance, set_dir.name)
        return manifest
    set_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(
        name=set_dir.name,
        provenance=provenance,
        model_preset=model_preset,
        hook=provenance.hook,
        d_model=d_model,
        grid=tuple(grid),
        tokens_per_image=grid[0] * grid[1],
        special=tuple(special),
        dtype=provenance.dtype,
        thumb_size=THUMB_SIZE,
        class_names=tuple(class_names),
        n_images=0,
        n_tokens=0,
        shards=(),
        images=(),
        complete=False,
    )
    manifest.dump(set_dir)
    return manifest


def mark_complete(set_dir: Path, manifest: Manifest, skipped_after_last_shard: int) -> Manifest:
    """Seal the set: every selected image is in a shard or was unreadable."""
    manifest = dataclasses.replace(
        manifest, complete=True, skipped_images=manifest.skipped_images + skipped_after_last_shard
    )
    manifest.dump(set_dir)
    return manifest


def size_on_disk(set_dir: Path) -> int:
    """Bytes allocated to the set's files: a shard being filled is a sparse file of its final size, and a file
    renamed or removed while being counted (a shard sealed meanwhile) is skipped."""
    total = 0
    for entry in os.scandir(set_dir):
        try:
            if entry.is_file():
                total += entry.stat().st_blocks * 512
        except FileNotFoundError:
            continue
    return total


class ShardWriter:
    """A thread that writes batches into the current shard's temporary memmap and seals shards atomically.

    The forward pass only enqueues; writing, thumbnails and statistics overlap the next batches' compute.
    """

    def __init__(self, set_dir: Path, manifest: Manifest):
        self.set_dir = set_dir
        self.manifest = manifest
        self.tokens_per_image = manifest.tokens_per_image
        self.d_model = manifest.d_model
        self.dtype = np.dtype(manifest.dtype)
        self.queue: queue.Queue = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.bytes_written = 0
        self.images_written = 0  # in the shard files (not just queued): what progress may claim as done
        self.thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
        self.thread.start()

    def open(self, index: int, n_images: int) -> None:
        self._put(("open", index, n_images))

    def write(
        self, acts: np.ndarray, images_u8: torch.Tensor, entries: list[ImageEntry], concepts, specials=None
    ) -> None:
        """acts (n_images, patches, d) float32, the images' uint8 pixels, their entries, (synthetic) concept maps and
        (models with CLS or register tokens) the special tokens' activations (n_images, S, d)."""
        self._put(("batch", acts, images_u8, entries, concepts, specials))

    def seal(self, selected_end: int, skipped: int) -> None:
        self._put(("seal", selected_end, skipped))

    def close(self) -> None:
        self._put(("close",))
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _put(self, item: tuple) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

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
            "stem": stem,
            "acts_tmp": acts_tmp,
            "thumbs_tmp": thumbs_tmp,
            "acts": _allocated_memmap(acts_tmp, self.dtype, (rows, self.d_model)),
            "thumbs": _allocated_memmap(thumbs_tmp, np.uint8, (n_images, THUMB_SIZE, THUMB_SIZE, 3)),
            "images": [],
            "concepts": [],
            "specials": [],
            "filled": 0,
            "sum": np.zeros(self.d_model, dtype=np.float64),
            "sumsq": np.zeros(self.d_model, dtype=np.float64),
        }

    def _write_batch(self, shard, acts: np.ndarray, images_u8: torch.Tensor, entries, concepts, specials) -> None:
        n = acts.shape[0]  # statistics are of the stored (rounded) values
        start = shard["filled"]
        rows = slice(start * self.tokens_per_image, (start + n) * self.tokens_per_image)
        shard["acts"][rows] = acts.reshape(-1, self.d_model)
        shard["thumbs"][start : start + n] = make_thumbnails(images_u8)
        as64 = shard["acts"][rows].astype(np.float64)
        shard["sum"] += as64.sum(0)
        shard["sumsq"] += np.square(as64).sum(0)
        shard["images"].extend(entries)
        if concepts is not None:
            shard["concepts"].append(concepts)
        if specials is not None:
            shard["specials"].append(specials.astype(self.dtype))
        shard["filled"] = start + n
        self.images_written += n

    def _seal(self, shard, selected_end: int, skipped: int) -> None:
        stem = shard["stem"]
        n_images = shard["filled"]
        files = {"acts": f"{stem}.npy", "thumbs": f"{stem}.thumbs.npy"}
        for role, tmp, n in (
            ("acts", shard["acts_tmp"], n_images * self.tokens_per_image),
            ("thumbs", shard["thumbs_tmp"], n_images),
        ):
            array = shard.pop(role)
            if len(array) != n:  # unreadable images left the planned shard short: store exactly what was filled
                atomic_save_npy(self.set_dir / files[role], np.array(array[:n]))
                del array
                os.unlink(tmp)
                continue
            array.flush()
            del array  # closes the memmap
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.set_dir / files[role])
        if shard["concepts"]:
            files["concepts"] = f"{stem}.concepts.npy"
            atomic_save_npy(self.set_dir / files["concepts"], np.concatenate(shard["concepts"]))
        if shard["specials"]:
            files["specials"] = f"{stem}.specials.npy"
            atomic_save_npy(self.set_dir / files["specials"], np.concatenate(shard["specials"]))
        row_start, image_start = self.manifest.n_tokens, self.manifest.n_images
        entry = ShardEntry(
            files=files,
            rows=(row_start, row_start + n_images * self.tokens_per_image),
            images=(image_start, image_start + n_images),
            selected_end=selected_end,
            skipped=skipped,
            sum=tuple(shard["sum"].tolist()),
            sumsq=tuple(shard["sumsq"].tolist()),
        )
        self.manifest = self.manifest.with_shard(entry, shard["images"])
        # the manifest names the shard only now that every file of it is complete on disk
        self.manifest.dump(self.set_dir)
        self.bytes_written += sum((self.set_dir / f).stat().st_size for f in files.values())


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
