"""Activation store benchmark: collection vs bare forward, store writes, shuffled reads vs a per-file .pt loader.

    python benchmarks/bench_activations.py [--preset demo|seed] [--images 2000] [--device auto]

Every ratio is measured in this one run on the same machine. Not a test: it prints numbers for the issue note.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.activation_set import ActivationSet
from vitsae_tui.engine.config import CollectConfig, DataConfig
from vitsae_tui.engine.data import iterate_batches, load_dataset, normalize
from vitsae_tui.engine.device import pick_device
from vitsae_tui.engine.events import Progress
from vitsae_tui.engine.models.native import VisionTransformerClassifier, default_hook
from vitsae_tui.engine.stages.collect import run as collect
from vitsae_tui.engine.workspace import Workspace, atomic_torch_save, atomic_write_json


def make_model_run(ws: Workspace, preset: str, n_images: int) -> tuple[str, config_mod.TrainModelConfig]:
    """An untrained model run of the preset's architecture: throughput does not depend on the weights."""
    cfg = config_mod.preset(preset)
    cfg = config_mod.from_dict(
        config_mod.TrainModelConfig,
        {**config_mod.to_dict(cfg), "data": config_mod.to_dict(DataConfig(n_train=n_images, n_val=8))},
    )
    run_dir = ws.new_run("models", f"bench-{preset}")
    atomic_write_json(run_dir / "config.json", config_mod.to_dict(cfg))
    atomic_write_json(run_dir / "dataset.json", {"class_names": [], "concept_names": []})
    atomic_torch_save(run_dir / "best.pt", {"model": VisionTransformerClassifier(cfg.model).state_dict()})
    return run_dir.name, cfg


class PerFileDataset(torch.utils.data.Dataset):
    """The reference prototype's loader: one .pt file per image, one torch.load per item."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.load(self.files[index], weights_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", choices=list(config_mod.PRESETS))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    device = pick_device(args.device)
    root = Path(tempfile.mkdtemp(prefix="vitsae-bench-"))
    try:
        ws = Workspace(root)
        run, cfg = make_model_run(ws, args.preset, args.images)
        hook = default_hook(cfg.model)
        dataset = load_dataset(ws, cfg.data, "train")  # draws and caches the images before any timing
        print(f"device {device}, preset {args.preset} (d_model {cfg.model.n_embd}), {args.images} images, hook {hook}")

        model = VisionTransformerClassifier(cfg.model).to(device).eval()
        with torch.inference_mode():
            for images, _l, _ok in iterate_batches(
                dataset, np.arange(min(args.batch_size * 2, len(dataset))), args.batch_size
            ):
                model.run_to(normalize(images.to(device)), hook)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for images, _l, _ok in iterate_batches(dataset, np.arange(len(dataset)), args.batch_size):
                model.run_to(normalize(images.to(device)), hook).float().cpu()
            bare = len(dataset) / (time.perf_counter() - start)

        progress: list[tuple[float, int]] = []

        def record(event) -> None:
            if isinstance(event, Progress):
                progress.append((time.perf_counter(), event.done))

        start = time.perf_counter()
        result = collect(
            CollectConfig(model=run, hook=hook, device=str(device), batch_size=args.batch_size, shard_images=1024),
            ws,
            record,
            threading.Event(),
        )
        collect_s = time.perf_counter() - start
        collected = result.n_images / collect_s
        # from the first to the last in-flight progress report: the rate once model and data are loaded
        (t0, d0), (t1, d1) = (
            (progress[0], progress[-2]) if len(progress) >= 3 else ((0.0, 0), (collect_s, result.n_images))
        )
        steady = (d1 - d0) / (t1 - t0)
        store = ActivationSet(result.run_dir)
        print(f"bare forward       {bare:10.1f} images/s")
        print(
            f"collection         {steady:10.1f} images/s   ratio {steady / bare:.2f}x of bare forward "
            "(target >= 0.9), steady state"
        )
        print(
            f"collection overall {collected:10.1f} images/s   ratio {collected / bare:.2f}x, "
            "including model and dataset loading"
        )
        print(
            f"store size         {store.nbytes / 1e6:10.1f} MB activations, "
            f"{result.bytes_on_disk / 1e6:.1f} MB with thumbnails"
        )

        acts = store.load_all()
        write_dir = root / "write-test"
        write_dir.mkdir()
        start = time.perf_counter()
        for i in range(3):
            out = np.lib.format.open_memmap(write_dir / f"w{i}.npy", mode="w+", dtype=acts.dtype, shape=acts.shape)
            out[:] = acts
            out.flush()
            del out
        write_rate = 3 * len(acts) / (time.perf_counter() - start)
        print(f"store write        {write_rate / 1e6:10.2f} M tokens/s")

        batch = 4096
        for _batch in store.shuffled_batches(batch, seed=0, epoch=0):
            pass  # one pass to warm the page cache, as a training epoch would
        start = time.perf_counter()
        n = 0
        for epoch in range(3):
            for b in store.shuffled_batches(batch, seed=0, epoch=epoch):
                n += len(b)
        shuffled = n / (time.perf_counter() - start)

        per_file_dir = root / "per-file"
        per_file_dir.mkdir()
        files = []
        for i in range(store.n_images):
            path = per_file_dir / f"{i}.pt"
            torch.save(torch.from_numpy(store.image(i).copy()), path)
            files.append(path)
        loader = torch.utils.data.DataLoader(
            PerFileDataset(files), batch_size=batch // store.tokens_per_image, shuffle=True
        )
        for _ in loader:
            pass
        start = time.perf_counter()
        n = 0
        for b in loader:
            n += b.shape[0] * b.shape[1]
        per_file = n / (time.perf_counter() - start)
        print(f"shuffled read      {shuffled / 1e6:10.2f} M tokens/s   (store, batch {batch}, page cache)")
        print(f"per-file .pt read  {per_file / 1e6:10.3f} M tokens/s   (reference loader)")
        print(f"read ratio         {shuffled / per_file:10.1f}x   (target >= 50x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
