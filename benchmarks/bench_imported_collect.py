"""Collection from an imported library model vs that model's bare forward to the same hook.

    python benchmarks/bench_imported_collect.py [--spec timm:vit_small_patch16_224] [--images 512] [--device auto]

Random weights saved to a file and imported with --weights (throughput does not depend on the weights). Every ratio
is measured in this one run. Not a test: it prints numbers for the issue note.
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

from vitsae_tui.engine.config import CollectConfig, DataConfig, ImportModelConfig
from vitsae_tui.engine.data import iterate_batches, load_dataset, normalize
from vitsae_tui.engine.device import pick_device
from vitsae_tui.engine.events import Progress
from vitsae_tui.engine.model_run import load_model
from vitsae_tui.engine.models import imported
from vitsae_tui.engine.stages import collect, import_model
from vitsae_tui.engine.workspace import Workspace


def random_weights(spec: str, path: Path) -> None:
    library, _, name = spec.partition(":")
    if library == "timm":
        import timm

        model = timm.create_model(name, pretrained=False)
    else:
        from torchvision.models import get_model

        model = get_model(name, weights=None)
    torch.save(model.state_dict(), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="timm:vit_small_patch16_224")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    device = pick_device(args.device)
    root = Path(tempfile.mkdtemp(prefix="vitsae-bench-"))
    try:
        ws = Workspace(root / "ws")
        random_weights(args.spec, root / "weights.pt")
        events = lambda e: None  # noqa: E731
        run = import_model.run(
            ImportModelConfig(args.spec, str(root / "weights.pt"), "bench"), ws, events, threading.Event()
        )
        loaded = load_model(ws, run.run_dir.name, device=device)
        model, hook = loaded.model, loaded.default_hook
        data = DataConfig(n_train=args.images, n_val=8)
        dataset = load_dataset(ws, data, "train")  # drawn and cached before any timing
        layout = model.token_layout(hook)
        version = imported.adapter(args.spec.split(":")[0]).VERSION
        print(f"device {device}, {args.spec} (library {version}, torch {torch.__version__}), {args.images} images")
        print(f"hook {hook}: {layout.grid[0]}x{layout.grid[1]} patches after {layout.n_special} special tokens")
        order = np.arange(len(dataset))

        def bare_forward() -> float:
            with torch.inference_mode():
                for images, _l, _ok in iterate_batches(dataset, order[: args.batch_size], args.batch_size):
                    model.run_to(normalize(images.to(device), model.preprocess), hook)  # warm-up
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for images, _l, _ok in iterate_batches(dataset, order, args.batch_size):
                    model.run_to(normalize(images.to(device), model.preprocess), hook).float().cpu()
                return len(dataset) / (time.perf_counter() - start)

        bare_before = bare_forward()
        progress: list[tuple[float, int]] = []

        def record(event) -> None:
            if isinstance(event, Progress) and event.unit == "images":
                progress.append((time.perf_counter(), event.done))

        start = time.perf_counter()
        cfg = CollectConfig(
            model="bench", data=data, device=str(device), batch_size=args.batch_size, shard_images=args.images
        )
        result = collect.run(cfg, ws, record, threading.Event())
        overall = result.n_images / (time.perf_counter() - start)
        (t0, d0), (t1, d1) = (progress[0], progress[-2]) if len(progress) >= 3 else ((0.0, 0), (1.0, 0))
        steady = (d1 - d0) / (t1 - t0) if t1 > t0 else float("nan")
        per_image = result.bytes_on_disk / result.n_images
        bare_after = bare_forward()  # before and after: a machine that slows down under sustained load shows here
        bare = (bare_before + bare_after) / 2
        print(f"bare forward to the hook {bare:8.1f} images/s   ({bare_before:.1f} before, {bare_after:.1f} after)")
        print(f"collection (steady)      {steady:8.1f} images/s   ratio {steady / bare:.2f}x (target >= 0.9)")
        print(f"collection (overall)     {overall:8.1f} images/s   ratio {overall / bare:.2f}x, with loading")
        print(f"on disk                  {per_image / 1e3:8.1f} kB per image (float16 patches, CLS, thumbnail)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
