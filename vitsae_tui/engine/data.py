"""Datasets (synthetic, Imagenette, any image folder), safe image decoding and batching.

Every dataset yields what the model sees as uint8 (3, 224, 224) tensors, so thumbnails, concept maps and the
token grid all refer to the same pixels; normalisation happens on the device (`normalize`).
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from vitsae_tui.engine import synthetic
from vitsae_tui.engine.config import DataConfig
from vitsae_tui.engine.errors import UserError, check_stop
from vitsae_tui.engine.models import NATIVE_PREPROCESS, Preprocess
from vitsae_tui.engine.workspace import Workspace, atomic_save_npy, atomic_write_text

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Larger images are refused rather than decoded (decompression-bomb guard, ~ 8k x 8k).
MAX_IMAGE_PIXELS = 64_000_000


class DataError(UserError, RuntimeError):
    """A dataset that cannot be used; the message says what to do."""


def normalize(images_u8: torch.Tensor, preprocess: Preprocess = NATIVE_PREPROCESS) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> floats of the default dtype normalised by the model's mean and std, on the images' device;
    images drawn at another size than the model's input (synthetic ones, 224) are resized to it first."""
    mean = torch.tensor(preprocess.mean, device=images_u8.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, device=images_u8.device).view(1, 3, 1, 1)
    images = images_u8.to(mean.dtype) / 255.0
    if images.shape[-1] != preprocess.size:
        images = torch.nn.functional.interpolate(
            images, size=(preprocess.size, preprocess.size), mode="bicubic", antialias=True, align_corners=False
        ).clamp(0, 1)
    return (images - mean) / std


def load_rgb(path: str | os.PathLike) -> Image.Image | None:
    """Decode any image to RGB (EXIF-rotated, alpha on white, 16-bit scaled), or None if unreadable or too large."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    return None
                image.load()
                image = ImageOps.exif_transpose(image)
                if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                    pixels = np.asarray(image, dtype=np.float32)
                    peak = max(float(pixels.max()), 1.0)
                    image = Image.fromarray((pixels * (255.0 / peak)).astype(np.uint8)).convert("RGB")
                elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                    rgba = image.convert("RGBA")
                    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    image = Image.alpha_composite(background, rgba).convert("RGB")
                else:
                    image = image.convert("RGB")
                return image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None


RESAMPLING = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
}


def to_model_pixels(image: Image.Image, preprocess: Preprocess = NATIVE_PREPROCESS) -> np.ndarray:
    """The model's own resize (short side to `resize`, antialiased, as torchvision's Resize on a PIL image) and centre
    crop (as CenterCrop): (size, size, 3) uint8."""
    size, short_side = preprocess.size, preprocess.resize
    short, long = sorted((image.width, image.height))
    long_side = min(int(short_side * long / short), 8 * short_side)  # a 1 x 100000 strip must not become 6 GB
    width, height = (short_side, long_side) if image.width <= image.height else (long_side, short_side)
    resized = image.resize((width, height), RESAMPLING[preprocess.interpolation])
    left = int(round((resized.width - size) / 2.0))
    top = int(round((resized.height - size) / 2.0))
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


@dataclass
class Sample:
    image: torch.Tensor  # (3, 224, 224) uint8
    label: int  # -1 when unlabelled
    ok: bool  # False when the file could not be decoded (the image is then all zeros)


class ImageDataset(torch.utils.data.Dataset, abc.ABC):
    """Common interface: samples, class names, a description of each item's source, optional concept maps."""

    class_names: tuple[str, ...] = ()
    concept_names: tuple[str, ...] = ()

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Sample: ...

    @abc.abstractmethod
    def source(self, index: int) -> str: ...

    @abc.abstractmethod
    def labels(self) -> np.ndarray: ...

    def concept_maps(self) -> np.ndarray | None:
        return None

    def concept_maps_at(self, grid: int, progress: DrawProgress | None = None, stop=None) -> np.ndarray | None:
        """Ground-truth concept maps rasterised on a grid x grid token grid (None: the dataset has none)."""
        return None


class SyntheticDataset(ImageDataset):
    """An in-memory split of the synthetic dataset, cached in the workspace so it is drawn only once."""

    class_names = synthetic.CLASS_NAMES
    concept_names = synthetic.CONCEPTS

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        concept_maps: np.ndarray,
        split: str,
        seed: int,
        cache: Path | None = None,
        start: int = 0,
    ):
        self.images_u8 = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (N, 3, H, W)
        self._labels = labels
        self._concept_maps = concept_maps
        self.split = split
        self.seed = seed
        self.cache, self.start = cache, start

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> Sample:
        return Sample(self.images_u8[index], int(self._labels[index]), True)

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index_tensor = torch.from_numpy(indices)
        return (
            self.images_u8[index_tensor],
            torch.from_numpy(self._labels[indices]),
            torch.ones(len(indices), dtype=torch.bool),
        )

    def source(self, index: int) -> str:
        return f"synthetic:seed={self.seed}:{self.split}:{index}"

    def labels(self) -> np.ndarray:
        return self._labels

    def concept_maps(self) -> np.ndarray:
        return self._concept_maps

    def concept_maps_at(self, grid: int, progress: DrawProgress | None = None, stop=None) -> np.ndarray:
        """The maps on another model's grid: the same images drawn again (their pixels and labels are the same) with
        the objects' coverage rasterised at that grid, cached beside the images."""
        if grid == self._concept_maps.shape[-1]:
            return self._concept_maps
        path = self.cache / f"{self.split}-concepts-{grid}.npy" if self.cache is not None else None
        if path is not None and path.exists():
            maps = np.load(path, allow_pickle=False)
            if maps.shape == (len(self), len(self.concept_names), grid, grid):
                return maps
        maps = _draw_parallel(self.seed, self.start, len(self), progress, stop, grid)[2]
        if path is not None:
            atomic_save_npy(path, maps)
        return maps


class FileListDataset(ImageDataset):
    """Images decoded from files on demand; an undecodable file yields a zero image flagged not ok."""

    def __init__(
        self,
        paths: list[str],
        labels: list[int],
        class_names: tuple[str, ...],
        preprocess: Preprocess = NATIVE_PREPROCESS,
    ):
        self.paths = paths
        self._labels = np.asarray(labels, dtype=np.int64)
        self.class_names = class_names
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        image = load_rgb(self.paths[index])
        if image is None:
            size = self.preprocess.size
            return Sample(torch.zeros(3, size, size, dtype=torch.uint8), int(self._labels[index]), False)
        pixels = torch.from_numpy(to_model_pixels(image, self.preprocess).copy()).permute(2, 0, 1)
        return Sample(pixels, int(self._labels[index]), True)

    def source(self, index: int) -> str:
        return readable(self.paths[index])

    def labels(self) -> np.ndarray:
        return self._labels


def _collate(samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.stack([s.image for s in samples]),
        torch.tensor([s.label for s in samples], dtype=torch.int64),
        torch.tensor([s.ok for s in samples], dtype=torch.bool),
    )


def iterate_batches(
    dataset: ImageDataset, indices: np.ndarray, batch_size: int, num_workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(images uint8 (B,3,224,224), labels (B,), ok (B,)) over `indices` in order; safe inside threads."""
    if isinstance(dataset, SyntheticDataset):
        for start in range(0, len(indices), batch_size):
            yield dataset.batch(indices[start : start + batch_size])
        return
    batches = [indices[s : s + batch_size].tolist() for s in range(0, len(indices), batch_size)]
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=_collate,
        num_workers=num_workers,
        # forked workers can deadlock when the parent runs threads (the app does)
        multiprocessing_context="spawn" if num_workers > 0 else None,
        persistent_workers=False,
    )
    yield from loader


def _synthetic_cache(ws: Workspace, cfg: DataConfig) -> Path:
    key = f"v{synthetic.GENERATOR_VERSION}-seed{cfg.data_seed}-train{cfg.n_train}-val{cfg.n_val}"
    return ws.data_dir / "synthetic" / key


DrawProgress = Callable[[int, int], None]
"""called with (images drawn so far, images to draw) while the synthetic data is drawn"""


def _draw_parallel(
    seed: int, start: int, count: int, progress: DrawProgress | None = None, stop=None, grid: int = synthetic.GRID_SIZE
) -> tuple[np.ndarray, ...]:
    """Draw in chunks on a thread per core (numpy and PIL release the GIL; threads need no spawn or pickling); a set
    `stop` event raises StopRequested within one chunk (~0.3 s)."""
    chunks = [(seed, s, min(50, start + count - s), grid) for s in range(start, start + count, 50)]

    def draw(chunk):
        check_stop(stop)  # the chunks still queued after a stop end at once
        return synthetic.draw_images(*chunk)

    parts = []
    with ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, 8))) as pool:
        for part in pool.map(draw, chunks):  # in order, as they finish
            parts.append(part)
            if progress is not None:
                progress(sum(len(p[1]) for p in parts), count)
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def load_synthetic(
    ws: Workspace, cfg: DataConfig, split: str, progress: DrawProgress | None = None, stop=None
) -> SyntheticDataset:
    """The synthetic split, drawn on first use and then read from the workspace cache."""
    cache = _synthetic_cache(ws, cfg)
    files = [cache / f"{split}-{part}.npy" for part in ("images", "labels", "concepts")]
    # validation images come from an index range the training split never reaches
    start, count = (0, cfg.n_train) if split == "train" else (10_000_000, cfg.n_val)
    if not all(f.exists() for f in files):
        cache.mkdir(parents=True, exist_ok=True)
        arrays = _draw_parallel(cfg.data_seed, start, count, progress, stop)
        for path, array in zip(files, arrays):
            atomic_save_npy(path, array)
        atomic_write_text(
            cache / "README.json",
            json.dumps(
                {"generator": f"vitsae-tui synthetic v{synthetic.GENERATOR_VERSION}", "concepts": synthetic.CONCEPTS}
            ),
        )
    try:
        images, labels, concepts = (np.load(f, allow_pickle=False) for f in files)
    except (OSError, ValueError):
        raise DataError(f"the synthetic cache in {cache} is damaged; delete that folder and run again") from None
    return SyntheticDataset(images, labels, concepts, split, cfg.data_seed, cache, start)


def readable(name: str) -> str:
    """A file name as text that can be stored in JSON: bytes that are not UTF-8 appear as \\xNN (the file still opens
    through its original name)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _scan_folder(root: Path) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Class sub-folders give labels; a flat folder of images gives unlabelled items (label -1)."""

    def images_in(folder: Path) -> list[str]:
        found = []
        for dirpath, _dirs, names in os.walk(folder, followlinks=False):
            for name in sorted(names):
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    found.append(os.path.join(dirpath, name))
        return sorted(found)

    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subfolders:
        paths, labels = [], []
        class_names = []
        for folder in subfolders:
            files = images_in(folder)
            if files:
                labels += [len(class_names)] * len(files)
                class_names.append(readable(folder.name))
                paths += files
        return paths, labels, tuple(class_names)
    files = images_in(root)
    return files, [-1] * len(files), ()


def load_folder(cfg: DataConfig, split: str, preprocess: Preprocess = NATIVE_PREPROCESS) -> FileListDataset:
    root = Path(cfg.dataset).expanduser()
    if not root.is_dir():
        raise DataError(f"{cfg.dataset} is not a folder; pass 'synthetic', 'imagenette' or a folder of images")
    paths, labels, class_names = _scan_folder(root)
    if not paths:
        raise DataError(f"no images (.jpg, .png, ...) found in {root}; point --dataset at a folder that has some")
    # a stable hash of each path inside the folder decides its split: adding files never moves old ones across,
    # and the split is the same wherever the folder lies (a hash of the absolute path changed with the location)
    relative = [Path(p).relative_to(root).as_posix() for p in paths]
    in_val = [int(hashlib.sha1(os.fsencode(r)).hexdigest()[:8], 16) / 0xFFFFFFFF < cfg.val_fraction for r in relative]
    keep = [(path, label) for path, label, val in zip(paths, labels, in_val) if val == (split == "val")]
    if split == "all":
        keep = list(zip(paths, labels))
    return FileListDataset([path for path, _ in keep], [label for _, label in keep], class_names, preprocess)


IMAGENETTE_FOLDERS = {"160px": "imagenette2-160", "320px": "imagenette2-320", "full": "imagenette2"}
"""the folder each Imagenette size extracts to (torchvision's and fast.ai's layout: FOLDER/{train,val}/WNID/*.JPEG)"""


def imagenette_root(ws: Workspace, cfg: DataConfig) -> Path:
    """The folder that holds the extracted FOLDER: --data-dir (or FOLDER itself, given as --data-dir), else the
    workspace's data/imagenette."""
    if not cfg.data_dir:
        return ws.data_dir / "imagenette"
    given = Path(cfg.data_dir).expanduser()
    return given.parent if given.name == IMAGENETTE_FOLDERS[cfg.imagenette_size] else given


def load_imagenette(
    ws: Workspace, cfg: DataConfig, split: str, preprocess: Preprocess = NATIVE_PREPROCESS
) -> FileListDataset:
    from torchvision.datasets import Imagenette

    if cfg.imagenette_size not in IMAGENETTE_FOLDERS:
        raise DataError(f"imagenette size {cfg.imagenette_size!r} is not one of 160px, 320px, full")
    root = imagenette_root(ws, cfg)
    folder = root / IMAGENETTE_FOLDERS[cfg.imagenette_size]
    tv_split = "train" if split == "train" else "val"
    if cfg.data_dir and not (folder / tv_split).is_dir():  # a given folder is used as it is, never downloaded into
        raise DataError(
            f"--data-dir {cfg.data_dir} holds no {folder.name}/{tv_split}; point it at the folder the "
            f"{folder.name}.tgz archive extracts to (or its parent)"
        )
    try:
        if folder.is_dir():
            data = Imagenette(str(root), split=tv_split, size=cfg.imagenette_size, download=False)
        else:
            root.mkdir(parents=True, exist_ok=True)
            data = Imagenette(str(root), split=tv_split, size=cfg.imagenette_size, download=True)
    except (FileNotFoundError, KeyError) as e:  # a split or a class folder torchvision does not know
        raise DataError(
            f"{folder} is not an extracted Imagenette ({type(e).__name__}: {e}); extract {folder.name}.tgz there again"
        ) from None
    except Exception as e:  # URLError, HTTPError, socket errors, a partial archive
        raise DataError(
            f"could not download Imagenette into {root} ({type(e).__name__}); connect to the internet, "
            f"or extract {folder.name}.tgz there (or pass --data-dir FOLDER), or use --dataset synthetic"
        ) from None
    paths = [str(p) for p, _ in data._samples]
    labels = [int(label) for _, label in data._samples]
    class_names = tuple(names[0] for names in data.classes)
    return FileListDataset(paths, labels, class_names, preprocess)


def load_dataset(
    ws: Workspace,
    cfg: DataConfig,
    split: str,
    progress: DrawProgress | None = None,
    stop=None,
    preprocess: Preprocess = NATIVE_PREPROCESS,
) -> ImageDataset:
    """split: 'train', 'val' or (folders) 'all'; `progress` follows the drawing of synthetic images, which a set
    `stop` event ends with StopRequested. Files are resized and cropped by the model's `preprocess`; synthetic images
    are drawn at 224 (their concept maps refer to those pixels)."""
    if cfg.dataset == "synthetic":
        return load_synthetic(ws, cfg, "val" if split == "val" else "train", progress, stop)
    if cfg.dataset == "imagenette":
        return load_imagenette(ws, cfg, split, preprocess)
    return load_folder(cfg, split, preprocess)
