"""Reading an activation set: manifest validation, access by image and token, shuffled token batches, device feeding.

The format (written by `activations.collect`): fixed-size `.npy` shards of [tokens, d_model] rows, one thumbnail (and,
on synthetic sets, concept-map) file per shard, and `manifest.json` listing only complete shards.
"""

from __future__ import annotations

import math
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitsae_tui.engine.errors import UserError
from vitsae_tui.engine.workspace import read_json

MANIFEST_VERSION = 1


class StoreError(UserError, RuntimeError):
    """An activation set that cannot be used as asked; the message says why and what to do."""


_MANIFEST_TYPES = {
    "version": int,
    "name": str,
    "provenance": dict,
    "hook": str,
    "d_model": int,
    "grid": list,
    "tokens_per_image": int,
    "dtype": str,
    "thumb_size": int,
    "class_names": list,
    "concept_names": list,
    "n_images": int,
    "n_tokens": int,
    "shards": list,
    "images": list,
    "complete": bool,
}
MAX_D_MODEL = 1 << 16


def validate_manifest(manifest: Any, set_dir: Path) -> dict[str, Any]:
    """Check a manifest's types, sizes, file names and row ranges; raise StoreError naming the first problem."""
    where = f"activations/{set_dir.name}/manifest.json"
    if not isinstance(manifest, dict):
        raise StoreError(f"{where} is not a JSON object; delete the set and collect it again")
    for key, kind in _MANIFEST_TYPES.items():
        if not isinstance(manifest.get(key), kind) or (kind is int and isinstance(manifest.get(key), bool)):
            raise StoreError(f"{where} has a missing or wrong '{key}'; delete the set and collect it again")
    if manifest["version"] != MANIFEST_VERSION:
        raise StoreError(f"{where} has format version {manifest['version']}, this vitsae-tui reads {MANIFEST_VERSION}")
    if not 0 < manifest["d_model"] <= MAX_D_MODEL or not 0 < manifest["tokens_per_image"] <= 4096:
        raise StoreError(f"{where} claims an absurd size (d_model {manifest['d_model']}); delete the set")
    if manifest["dtype"] not in ("float16", "float32"):
        raise StoreError(f"{where} has dtype {manifest['dtype']!r}; only float16 and float32 are stored")
    try:
        _check_shards(manifest, set_dir, where)
    except (KeyError, TypeError, IndexError, ValueError):
        raise StoreError(f"{where} has malformed shard entries; delete the set and collect it again") from None
    for key in ("mean", "var"):
        stats = manifest.get(key)
        if stats and (
            not isinstance(stats, list)
            or len(stats) != manifest["d_model"]
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in stats)
        ):
            raise StoreError(
                f"{where} records NaN, infinite or malformed activation statistics ('{key}'): the model "
                f"produced non-finite activations; collect again from a healthy checkpoint"
            )
    return manifest


def _check_shards(manifest: dict[str, Any], set_dir: Path, where: str) -> None:
    rows = images = 0
    for i, shard in enumerate(manifest["shards"]):
        files = shard.get("files") if isinstance(shard, dict) else None
        if not isinstance(files, dict) or not all(
            isinstance(f, str) and re.fullmatch(r"shard-\d{5}(\.\w+)?\.npy", f) for f in files.values()
        ):
            raise StoreError(f"{where} names shard files outside the set; delete the set and collect it again")
        if (
            shard.get("rows") != [rows, rows + (shard["images"][1] - shard["images"][0]) * manifest["tokens_per_image"]]
            or shard["images"][0] != images
        ):
            raise StoreError(f"{where} has inconsistent row ranges at shard {i}; delete the set and collect it again")
        rows, images = shard["rows"][1], shard["images"][1]
        for key in ("acts", "thumbs"):
            if not (set_dir / files.get(key, "")).is_file():
                raise StoreError(
                    f"activations/{set_dir.name} lacks {files.get(key)}; collect it again with the same command"
                )
    if rows != manifest["n_tokens"] or images != manifest["n_images"] or len(manifest["images"]) != images:
        raise StoreError(f"{where} totals do not match its shards; delete the set and collect it again")


class ActivationStore:
    """Read access to an activation set: by image, by token, sequentially or shuffled in token batches."""

    def __init__(self, path: str | os.PathLike, allow_incomplete: bool = False):
        self.path = Path(path)
        if not (self.path / "manifest.json").is_file():
            raise StoreError(f"{self.path} is not an activation set (no manifest.json); collect one first")
        self.manifest = validate_manifest(read_json(self.path / "manifest.json"), self.path)
        if not self.manifest["complete"] and not allow_incomplete:
            raise StoreError(
                f"activations/{self.path.name} is incomplete ({self.manifest['n_images']} of "
                f"{self.manifest.get('n_images_planned', '?')} images); re-run the same collect command to finish it"
            )
        self.d_model: int = self.manifest["d_model"]
        self.tokens_per_image: int = self.manifest["tokens_per_image"]
        self.n_images: int = self.manifest["n_images"]
        self.n_tokens: int = self.manifest["n_tokens"]
        self.hook: str = self.manifest["hook"]
        self.class_names: list[str] = self.manifest["class_names"]
        self.concept_names: list[str] = self.manifest["concept_names"]
        self.shards: list[np.ndarray] = []
        self.thumbs: list[np.ndarray] = []
        self.row_starts = np.array([s["rows"][0] for s in self.manifest["shards"]] + [self.n_tokens], dtype=np.int64)
        for shard in self.manifest["shards"]:
            acts = np.load(self.path / shard["files"]["acts"], mmap_mode="r", allow_pickle=False)
            n_rows = shard["rows"][1] - shard["rows"][0]
            if acts.shape != (n_rows, self.d_model) or acts.dtype != np.dtype(self.manifest["dtype"]):
                raise StoreError(
                    f"{shard['files']['acts']} in activations/{self.path.name} has shape {acts.shape} "
                    f"{acts.dtype}, the manifest says ({n_rows}, {self.d_model}) {self.manifest['dtype']}"
                )
            self.shards.append(acts)
            self.thumbs.append(np.load(self.path / shard["files"]["thumbs"], mmap_mode="r", allow_pickle=False))
        self.mean = np.asarray(self.manifest["mean"], dtype=np.float64) if self.manifest["mean"] else None
        self.var = np.asarray(self.manifest["var"], dtype=np.float64) if self.manifest["var"] else None

    def __len__(self) -> int:
        return self.n_tokens

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.shards)

    def _locate_row(self, row: int) -> tuple[int, int]:
        if not 0 <= row < self.n_tokens:
            raise IndexError(f"token {row} is outside 0..{self.n_tokens - 1}")
        shard = int(np.searchsorted(self.row_starts, row, side="right") - 1)
        return shard, row - int(self.row_starts[shard])

    def token(self, row: int) -> np.ndarray:
        shard, offset = self._locate_row(row)
        return np.asarray(self.shards[shard][offset])

    def image(self, index: int) -> np.ndarray:
        """The (tokens_per_image, d_model) activations of one image."""
        if not 0 <= index < self.n_images:
            raise IndexError(f"image {index} is outside 0..{self.n_images - 1}")
        shard, offset = self._locate_row(index * self.tokens_per_image)
        return np.asarray(self.shards[shard][offset : offset + self.tokens_per_image])

    def thumbnail(self, index: int) -> np.ndarray:
        shard, offset = self._locate_row(index * self.tokens_per_image)
        return np.asarray(self.thumbs[shard][offset // self.tokens_per_image])

    def labels(self) -> np.ndarray:
        return np.array([entry["label"] for entry in self.manifest["images"]], dtype=np.int64)

    def concept_maps(self) -> np.ndarray | None:
        """(n_images, n_concepts, grid, grid) bool for synthetic sets, else None."""
        files = [s["files"].get("concepts") for s in self.manifest["shards"]]
        if not files or not all(files):
            return None
        return np.concatenate([np.load(self.path / f, allow_pickle=False) for f in files])

    def sequential_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Token batches in storage order (the last one may be short)."""
        for shard in self.shards:
            for start in range(0, len(shard), batch_size):
                yield np.asarray(shard[start : start + batch_size])

    def load_all(self) -> np.ndarray:
        """Every token as one (n_tokens, d_model) array in the storage dtype."""
        return np.concatenate([np.asarray(s) for s in self.shards]) if self.shards else np.empty((0, self.d_model))

    def shuffled_batches(
        self,
        batch_size: int,
        seed: int,
        epoch: int,
        buffer_rows: int = 1 << 18,
        chunk_rows: int = 1 << 12,
        drop_last: bool = False,
        heldout_every: int = 0,
        part: Callable[[int], slice] | None = None,
    ) -> Iterator[np.ndarray]:
        """Every token exactly once per epoch in an order fixed by (seed, epoch), with bounded memory.

        Contiguous chunks (~110 images) are read in a random order into a buffer of ~buffer_rows (64 chunks from all
        over the set), which is permuted and cut into batches; a set that fits in one buffer is shuffled globally.
        The buffer stays small enough for the permuting gather to run at memory speed. With heldout_every=k, the
        tokens of every k-th image (the evaluation images) are left out. With part (a data-parallel rank's share of a
        global batch of n rows), only those rows of each global batch are gathered: the order is the same on any number
        of ranks, and each token goes to exactly one rank.
        """
        part = part or (lambda n: slice(0, n))
        rng = np.random.default_rng([seed, epoch])
        chunks = [
            (s, start, min(start + chunk_rows, len(shard)))
            for s, shard in enumerate(self.shards)
            for start in range(0, len(shard), chunk_rows)
        ]
        order = rng.permutation(len(chunks))
        carry = np.empty((0, self.d_model), dtype=np.dtype(self.manifest["dtype"]))
        pending: list[np.ndarray] = []
        pending_rows = 0
        for position, chunk_index in enumerate(order):
            s, start, end = chunks[chunk_index]
            rows = np.asarray(self.shards[s][start:end])
            if heldout_every:
                image_ids = (self.row_starts[s] + np.arange(start, end)) // self.tokens_per_image
                rows = rows[image_ids % heldout_every != heldout_every - 1]
            pending.append(rows)
            pending_rows += len(rows)
            if pending_rows < buffer_rows and position < len(order) - 1:
                continue
            buffer = np.concatenate([carry, *pending])
            permutation = rng.permutation(len(buffer))
            pending, pending_rows = [], 0
            full = len(buffer) // batch_size * batch_size
            mine = part(batch_size)
            for b in range(0, full, batch_size):
                yield np.take(buffer, permutation[b + mine.start : b + mine.stop], axis=0)
            carry = np.take(buffer, permutation[full:], axis=0)
        if len(carry) and not drop_last:
            yield carry[part(len(carry))]


class TokenSource:
    """Shuffled float32 token batches on a device: the whole set resident when it fits, else streamed with prefetch.

    Under data parallelism (`part`, a rank's share of a global batch) each rank gets its slice of the same global
    batches; `epoch` yields (local batch, global batch size).
    """

    def __init__(
        self,
        store: ActivationStore,
        device: torch.device,
        batch_size: int,
        seed: int,
        resident: bool | None = None,
        resident_budget_bytes: int | None = None,
        heldout_every: int = 0,
        part: Callable[[int], slice] | None = None,
    ):
        self.store, self.device, self.batch_size, self.seed = store, device, batch_size, seed
        self.heldout_every = heldout_every
        self.part = part or (lambda n: slice(0, n))
        image_ids = np.arange(store.n_tokens) // store.tokens_per_image
        keep = image_ids % heldout_every != heldout_every - 1 if heldout_every else np.ones(store.n_tokens, dtype=bool)
        self.n_train_tokens = int(keep.sum())
        if resident is None:
            resident = store.nbytes <= (
                resident_budget_bytes if resident_budget_bytes is not None else _resident_budget(device)
            )
        self.resident = resident
        self.tokens = None
        if resident:
            tokens = store.load_all()[keep]
            if not np.isfinite(tokens).all():  # statistics catch collected NaNs; this catches a shard changed since
                raise StoreError(f"activations/{store.path.name} holds NaN or infinite values; collect it again")
            self.tokens = torch.from_numpy(tokens).to(device)

    def batches_per_epoch(self) -> int:
        return -(-self.n_train_tokens // self.batch_size)

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[tuple[torch.Tensor, int]]:
        """(float32 local batch, global batch size) pairs; skip_batches resumes mid-epoch on the same order."""
        sizes = (
            min(self.batch_size, self.n_train_tokens - b)
            for b in range(skip_batches * self.batch_size, self.n_train_tokens, self.batch_size)
        )
        if self.tokens is not None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.tokens), generator=generator).to(self.device)
            for b, n_global in zip(range(skip_batches * self.batch_size, len(order), self.batch_size), sizes):
                mine = self.part(n_global)
                yield self.tokens[order[b + mine.start : b + mine.stop]].float(), n_global
            return
        batches = self.store.shuffled_batches(
            self.batch_size, self.seed, epoch, heldout_every=self.heldout_every, part=self.part
        )
        for _ in range(skip_batches):
            next(batches, None)
        yield from zip(prefetch(batches, self.device), sizes)


def _resident_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return 4 << 30  # host memory: keep sets up to 4 GiB in RAM, stream larger ones


def prefetch(batches: Iterator[np.ndarray], device: torch.device, depth: int = 4) -> Iterator[torch.Tensor]:
    """Read and copy batches in a background thread (pinned memory on CUDA) so the device never waits on disk."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            for batch in batches:
                tensor = torch.from_numpy(np.ascontiguousarray(batch))
                if device.type == "cuda":
                    tensor = tensor.pin_memory()
                slots.put(tensor)
        except BaseException as e:
            failure.append(e)
        finally:
            slots.put(done)

    thread = threading.Thread(target=produce, name="token-prefetch", daemon=True)
    thread.start()
    while True:
        item = slots.get()
        if item is done:
            break
        yield item.to(device, non_blocking=True).float()
    thread.join()
    if failure:
        raise failure[0]
