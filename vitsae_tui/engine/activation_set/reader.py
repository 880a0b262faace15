"""Reading an activation set: by image and token, sequentially or shuffled in token batches, with thumbnails."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from vitsae_tui.engine.activation_set.manifest import (
    MANIFEST,
    ImageEntry,
    Manifest,
    Provenance,
    SetSummary,
    StoreError,
)
from vitsae_tui.engine.config import DataConfig
from vitsae_tui.engine.errors import OutOfRange, UserError


class ActivationSet:
    """Read access to an activation set: by image, by token, sequentially or shuffled in token batches."""

    def __init__(self, path: str | os.PathLike, allow_incomplete: bool = False):
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise StoreError(f"{self.path} is not an activation set (no manifest.json); collect one first")
        self.manifest = Manifest.load(self.path)
        if not self.manifest.complete and not allow_incomplete:
            raise StoreError(
                f"activations/{self.path.name} is incomplete ({self.manifest.n_images} of "
                f"{self.manifest.n_images_planned or '?'} images); re-run the same collect command to finish it"
            )
        self.d_model: int = self.manifest.d_model
        self.tokens_per_image: int = self.manifest.tokens_per_image
        self.n_images: int = self.manifest.n_images
        self.n_tokens: int = self.manifest.n_tokens
        self.hook: str = self.manifest.hook
        self.grid: int = self.manifest.grid[0]
        self.provenance: Provenance = self.manifest.provenance
        self.class_names: list[str] = list(self.manifest.class_names)
        self.concept_names: list[str] = list(self.manifest.concept_names)
        self.special: tuple[str, ...] = self.manifest.special
        self.shards: list[np.ndarray] = []
        self.thumbs: list[np.ndarray] = []
        self.specials: list[np.ndarray] = []
        self.row_starts = np.array([s.rows[0] for s in self.manifest.shards] + [self.n_tokens], dtype=np.int64)
        for shard in self.manifest.shards:
            acts = np.load(self.path / shard.files["acts"], mmap_mode="r", allow_pickle=False)
            n_rows = shard.rows[1] - shard.rows[0]
            if acts.shape != (n_rows, self.d_model) or acts.dtype != np.dtype(self.manifest.dtype):
                raise StoreError(
                    f"{shard.files['acts']} in activations/{self.path.name} has shape {acts.shape} "
                    f"{acts.dtype}, the manifest says ({n_rows}, {self.d_model}) {self.manifest.dtype}"
                )
            self.shards.append(acts)
            self.thumbs.append(np.load(self.path / shard.files["thumbs"], mmap_mode="r", allow_pickle=False))
            if self.special:
                specials = np.load(self.path / shard.files["specials"], mmap_mode="r", allow_pickle=False)
                expected = (shard.images[1] - shard.images[0], len(self.special), self.d_model)
                if specials.shape != expected or specials.dtype != acts.dtype:
                    raise StoreError(
                        f"{shard.files['specials']} in activations/{self.path.name} has shape {specials.shape}, the "
                        f"manifest says {expected}; collect the set again"
                    )
                self.specials.append(specials)
        self.mean = np.asarray(self.manifest.mean, dtype=np.float64) if self.manifest.mean else None
        self.var = np.asarray(self.manifest.var, dtype=np.float64) if self.manifest.var else None

    def __len__(self) -> int:
        return self.n_tokens

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.shards)

    def _locate_row(self, row: int) -> tuple[int, int]:
        if not 0 <= row < self.n_tokens:
            raise OutOfRange(f"token {row} is outside 0..{self.n_tokens - 1}")
        shard = int(np.searchsorted(self.row_starts, row, side="right") - 1)
        return shard, row - int(self.row_starts[shard])

    def token(self, row: int) -> np.ndarray:
        shard, offset = self._locate_row(row)
        return np.asarray(self.shards[shard][offset])

    def image(self, index: int) -> np.ndarray:
        """The (tokens_per_image, d_model) activations of one image."""
        if not 0 <= index < self.n_images:
            raise OutOfRange(f"image {index} is outside 0..{self.n_images - 1}")
        shard, offset = self._locate_row(index * self.tokens_per_image)
        return np.asarray(self.shards[shard][offset : offset + self.tokens_per_image])

    def prefix(self, index: int) -> np.ndarray | None:
        """The (S, d_model) activations of one image's special tokens (CLS, registers), None for a model without."""
        if not self.special:
            return None
        self.image_entry(index)
        shard = int(np.searchsorted(self.row_starts, index * self.tokens_per_image, side="right") - 1)
        return np.asarray(self.specials[shard][index - self.manifest.shards[shard].images[0]])

    def prefixes(self, indices) -> np.ndarray | None:
        """(n, S, d_model) special-token activations of several images, None for a model without."""
        if not self.special:
            return None
        return np.stack([self.prefix(int(i)) for i in indices])

    def thumbnail(self, index: int) -> np.ndarray:
        """(thumb_size, thumb_size, 3) uint8 of one image."""
        shard, offset = self._locate_row(index * self.tokens_per_image)
        return np.asarray(self.thumbs[shard][offset // self.tokens_per_image])

    def image_entry(self, index: int) -> ImageEntry:
        if not 0 <= index < self.n_images:
            raise OutOfRange(f"image {index} is outside 0..{self.n_images - 1}")
        return self.manifest.images[index]

    def labels(self) -> np.ndarray:
        return np.array([entry.label for entry in self.manifest.images], dtype=np.int64)

    @property
    def has_concept_maps(self) -> bool:
        """Whether every shard carries ground-truth concept maps (synthetic sets), without reading them."""
        return bool(self.manifest.shards) and all(s.files.get("concepts") for s in self.manifest.shards)

    def concept_maps(self) -> np.ndarray | None:
        """(n_images, n_concepts, grid, grid) bool for synthetic sets, else None; read from disk on every call."""
        if not self.has_concept_maps:
            return None
        return np.concatenate(
            [np.load(self.path / s.files["concepts"], allow_pickle=False) for s in self.manifest.shards]
        )

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
        carry = np.empty((0, self.d_model), dtype=np.dtype(self.manifest.dtype))
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


def find_validation_set(activations_dir: Path, train: Provenance) -> str | None:
    """The complete set of the same model checkpoint, hook and dataset on its validation split (the largest)."""
    found: list[tuple[int, str]] = []
    for path in sorted(activations_dir.iterdir()) if activations_dir.is_dir() else []:
        try:
            summary = SetSummary.load(path)
        except (UserError, OSError):
            continue
        p = summary.provenance
        if (
            summary.complete
            and p.split == "val"
            and (p.model_run, p.checkpoint_sha256, p.hook, p.data)
            == (train.model_run, train.checkpoint_sha256, train.hook, train.data)
        ):
            found.append((summary.n_images, path.name))
    return max(found)[1] if found else None


def collect_command(
    workspace_args: list[str], provenance: Provenance, split: str, model_data: DataConfig | None
) -> str:
    """The `vitsae-tui collect` command, ready to paste, that collects `split` of the same model checkpoint, hook and
    dataset as `provenance` (data flags left out when the set read the model's own data, which collect inherits)."""
    p = provenance
    words = ["vitsae-tui", "collect", *workspace_args, "--model", p.model_run, "--hook", p.hook, "--split", split]
    if p.checkpoint != "best":
        words += ["--checkpoint", p.checkpoint]
    if model_data is None or not p.data.same_dataset(model_data):
        defaults = DataConfig()
        words += ["--dataset", p.data.dataset]
        flags = {
            "synthetic": ("n_train", "n_val", "data_seed"),
            "imagenette": ("imagenette_size", "data_dir"),
        }.get(p.data.dataset, ("val_fraction",))
        for name in flags:
            if getattr(p.data, name) != getattr(defaults, name):
                words += ["--" + name.replace("_", "-"), str(getattr(p.data, name))]
    return shlex.join(words)
