"""The manifest of an activation set: its typed, validated schema and the provenance check."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.config import DataConfig
from vitsae_tui.engine.errors import UserError
from vitsae_tui.engine.workspace import atomic_write_json, read_json

MANIFEST_VERSION = 1
MANIFEST = "manifest.json"
SUMMARY = "summary.json"
MAX_MANIFEST_BYTES = 1 << 30
"""an ImageNet-size set's manifest (1.3M image entries) is about 200 MB"""
MAX_D_MODEL = 1 << 16
MAX_TOKENS_PER_IMAGE = 4096
SPECIAL_KINDS = ("cls", "dist", "reg")
THUMB_SIZE = 112  # a 2x box filter of the 224 model input: the cheapest good downscale, sharp enough for PNG cards
SHARD_FILE = re.compile(r"shard-\d{5}(\.\w+)?\.npy")


class StoreError(UserError, RuntimeError):
    """An activation set that cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Provenance:
    """Where a set came from; collecting again into the same set must match it."""

    model_run: str
    checkpoint: str
    checkpoint_sha256: str
    hook: str
    data: DataConfig
    split: str
    limit: int
    dtype: str
    shard_images: int


@dataclass(frozen=True)
class ImageEntry:
    source: str
    """where the image came from (a file path, or synthetic:<index>)"""
    label: int
    """its class index (-1: unlabelled)"""
    index: int
    """its index in the dataset split"""


@dataclass(frozen=True)
class ShardEntry:
    files: dict[str, str]
    """file names by role: acts, thumbs and (synthetic sets) concepts"""
    rows: tuple[int, int]
    images: tuple[int, int]
    selected_end: int
    """position in the selected images after this shard: where a resumed collection continues"""
    skipped: int
    sum: tuple[float | None, ...]
    """per-dimension sums of the stored values (null: non-finite)"""
    sumsq: tuple[float | None, ...]


@dataclass(frozen=True)
class Manifest:
    name: str
    provenance: Provenance
    hook: str
    d_model: int
    grid: tuple[int, int]
    tokens_per_image: int
    dtype: str
    thumb_size: int
    n_images: int
    n_tokens: int
    shards: tuple[ShardEntry, ...]
    images: tuple[ImageEntry, ...]
    complete: bool
    class_names: tuple[str, ...] = ()
    concept_names: tuple[str, ...] = ()
    model_preset: str = ""
    n_images_planned: int = 0
    skipped_images: int = 0
    mean: tuple[float | None, ...] | None = None
    """per-dimension mean over every token (null entries: the model produced non-finite activations)"""
    var: tuple[float | None, ...] | None = None
    special: tuple[str, ...] = ()
    """kinds of the tokens before the patches (cls, reg, …), kept beside each shard for splicing, never trained on"""
    version: int = MANIFEST_VERSION

    def validate(self) -> None:
        where = f"activations/{self.name}/manifest.json"
        if self.version != MANIFEST_VERSION:
            raise StoreError(f"{where} has format version {self.version}, this vitsae-tui reads {MANIFEST_VERSION}")
        if not 0 < self.d_model <= MAX_D_MODEL or not 0 < self.tokens_per_image <= MAX_TOKENS_PER_IMAGE:
            raise StoreError(f"{where} claims an absurd size (d_model {self.d_model}); delete the set")
        if len(self.special) > 64 or not all(kind in SPECIAL_KINDS for kind in self.special):
            raise StoreError(f"{where} names unknown special tokens; delete the set")
        if min(self.grid) < 1 or self.grid[0] * self.grid[1] != self.tokens_per_image:
            raise StoreError(f"{where} has a {self.grid} grid for {self.tokens_per_image} tokens; delete the set")
        if self.dtype not in ("float16", "float32"):
            raise StoreError(f"{where} has dtype {self.dtype!r}; only float16 and float32 are stored")
        for stats in (self.mean, self.var):
            if stats is not None and (
                len(stats) != self.d_model or not all(v is not None and math.isfinite(v) for v in stats)
            ):
                raise StoreError(
                    f"{where} records NaN, infinite or malformed activation statistics: the model produced "
                    f"non-finite activations; collect again from a healthy checkpoint"
                )

    @classmethod
    def load(cls, set_dir: Path) -> Manifest:
        """The validated manifest of a set folder; StoreError naming the first problem."""
        where = f"activations/{set_dir.name}/manifest.json"
        try:
            manifest = config_mod.from_dict(cls, read_json(set_dir / MANIFEST, MAX_MANIFEST_BYTES), where)
        except config_mod.ConfigError as e:
            top = (e.field or "").split(".")[0]
            problem = (
                f"malformed {top[:-1]} entries"
                if top in ("shards", "images") and "." in (e.field or "")
                else (f"a missing or wrong '{e.field}'")
            )
            raise StoreError(f"{where} has {problem}; delete the set and collect it again") from None
        manifest.check_shards(set_dir)
        return manifest

    def dump(self, set_dir: Path) -> None:
        """The manifest, then its summary: a summary never describes shards the manifest does not list yet."""
        atomic_write_json(set_dir / MANIFEST, config_mod.to_dict(self))
        summary = {f.name: getattr(self, f.name) for f in dataclasses.fields(SetSummary)}
        atomic_write_json(set_dir / SUMMARY, config_mod.to_dict(SetSummary(**summary)))

    def check_shards(self, set_dir: Path) -> None:
        where = f"activations/{set_dir.name}/manifest.json"
        rows = images = 0
        for i, shard in enumerate(self.shards):
            if not all(SHARD_FILE.fullmatch(f) for f in shard.files.values()):
                raise StoreError(f"{where} names shard files outside the set; delete the set and collect it again")
            n_rows = (shard.images[1] - shard.images[0]) * self.tokens_per_image
            if shard.rows != (rows, rows + n_rows) or shard.images[0] != images:
                raise StoreError(
                    f"{where} has inconsistent row ranges at shard {i}; delete the set and collect it again"
                )
            rows, images = shard.rows[1], shard.images[1]
            for role in ("acts", "thumbs", *(("specials",) if self.special else ())):
                if not (set_dir / shard.files.get(role, "")).is_file():
                    raise StoreError(
                        f"activations/{set_dir.name} lacks {shard.files.get(role)}; collect it again with the same "
                        "command"
                    )
        if rows != self.n_tokens or images != self.n_images or len(self.images) != images:
            raise StoreError(f"{where} totals do not match its shards; delete the set and collect it again")

    def with_shard(self, shard: ShardEntry, images: list[ImageEntry]) -> Manifest:
        """This manifest with one more sealed shard, its images and the running totals and statistics."""
        shards = (*self.shards, shard)
        n_tokens = shard.rows[1]
        total = np.sum([s.sum for s in shards], axis=0)
        total_sq = np.sum([s.sumsq for s in shards], axis=0)
        mean = total / n_tokens if n_tokens else None
        var = np.maximum(total_sq / n_tokens - mean**2, 0.0) if n_tokens else None
        return dataclasses.replace(
            self,
            shards=shards,
            images=(*self.images, *images),
            n_images=shard.images[1],
            n_tokens=n_tokens,
            skipped_images=sum(s.skipped for s in shards),
            mean=tuple(mean.tolist()) if mean is not None else None,
            var=tuple(var.tolist()) if var is not None else None,
        )


@dataclass(frozen=True)
class SetSummary:
    """A manifest without its shard and image tables: what lists and lineages read, small at any set size."""

    name: str
    provenance: Provenance
    hook: str
    d_model: int
    grid: tuple[int, int]
    dtype: str
    n_images: int
    n_tokens: int
    complete: bool
    n_images_planned: int = 0
    version: int = MANIFEST_VERSION

    @classmethod
    def load(cls, set_dir: Path) -> SetSummary:
        """The set's summary.json; the manifest itself when the summary is missing or older (sets written before it)."""
        summary, manifest = set_dir / SUMMARY, set_dir / MANIFEST
        try:
            fresh = summary.stat().st_mtime_ns >= manifest.stat().st_mtime_ns
        except FileNotFoundError:
            fresh = False
        if not fresh:
            full = Manifest.load(set_dir)
            return cls(**{f.name: getattr(full, f.name) for f in dataclasses.fields(cls)})
        where = f"activations/{set_dir.name}/{SUMMARY}"
        try:
            loaded = config_mod.from_dict(cls, read_json(summary), where)
        except config_mod.ConfigError as e:
            raise StoreError(f"{e}; delete the set and collect it again") from None
        if loaded.version != MANIFEST_VERSION:
            raise StoreError(f"{where} has format version {loaded.version}, this vitsae-tui reads {MANIFEST_VERSION}")
        return loaded


def check_provenance(existing: Provenance, wanted: Provenance, name: str) -> None:
    """Refuse to add to a set collected differently (another checkpoint, hook, dataset, split, ...)."""
    old_values = config_mod.to_dict(existing)
    for key, value in config_mod.to_dict(wanted).items():
        old = old_values[key]
        if old == value:
            continue
        if key == "checkpoint_sha256":
            raise StoreError(
                f"activations/{name} was collected from a different {wanted.checkpoint} checkpoint of "
                f"models/{wanted.model_run} ({old[:12]} vs now {value[:12]}); "
                "pass --name to collect a new set, or delete the old one"
            )
        raise StoreError(
            f"activations/{name} was collected with {key}={old!r}, not {value!r}; "
            "pass --name to collect a new set, or delete the old one"
        )
