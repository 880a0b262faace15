"""Home on an ImageNet-size activation set: first frame and refresh cost, against reading the whole manifest.

    python benchmarks/bench_home_scale.py [--images 1300000] [--refreshes 20]

Builds a small indexed workspace (untrained model, tiny SAE), then grows its activation set's manifest to `--images`
image entries, as a 1.3M-image ImageNet collection writes it. Prints, in one run on the same files:
  - the baseline: parsing that manifest into its typed schema, which home used to do on the UI thread at start and
    after every change;
  - home's first frame: app start until the run table and the lineage are drawn (target ≤ 1 s);
  - a refresh: the UI thread's share (target ≤ 50 ms) and the whole scan in its worker thread.
Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.activation_set import MANIFEST, SUMMARY, Manifest
from vitsae_tui.engine.workspace import MAX_JSON_BYTES, read_json


def grow_manifest(set_dir: Path, images: int) -> float:
    """Rewrite the manifest with `images` image entries (as collect writes it); returns its size in MB."""
    manifest = json.loads((set_dir / MANIFEST).read_text())
    manifest["images"] = [
        {"source": f"/data/imagenet/train/n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG", "label": i % 1000, "index": i}
        for i in range(images)
    ]
    manifest["n_images"] = images
    text = json.dumps(manifest, indent=2, sort_keys=True)
    (set_dir / MANIFEST).write_text(text)
    summary = json.loads((set_dir / SUMMARY).read_text())
    (set_dir / SUMMARY).write_text(json.dumps({**summary, "n_images": images}))  # written after it, as collect does
    return len(text) / 1e6


async def home_timings(root: Path, refreshes: int) -> tuple[float, list[float], list[float], list[float]]:
    from vitsae_tui.tui.app import VitsaeApp
    from vitsae_tui.tui.screens import home

    ui_times: list[float] = []
    redraw_times: list[float] = []
    scan_times: list[float] = []
    show_scan = home.HomeScreen.show_scan

    def timed_show(self, *args):
        start = time.perf_counter()
        show_scan(self, *args)
        ui_times.append(time.perf_counter() - start)

    home.HomeScreen.show_scan = timed_show
    start = time.perf_counter()
    app = VitsaeApp(root)
    async with app.run_test(size=(120, 40)) as pilot:
        while not ui_times:
            await pilot.pause(0.005)
        first_frame = time.perf_counter() - start
        for _ in range(refreshes):  # the worker's listing, timed apart, then a refresh as the timer starts it
            start = time.perf_counter()
            home.list_workspace(app.workspace, app.lineage_selection)
            scan_times.append(time.perf_counter() - start)
            before = len(ui_times)
            app.screen.refresh_runs()
            while len(ui_times) == before:
                await pilot.pause(0.005)
        for _ in range(refreshes):  # a refresh that finds every row changed and rebuilds the table
            app.screen.rows_shown = ()
            before = len(ui_times)
            app.screen.refresh_runs()
            while len(ui_times) == before:
                await pilot.pause(0.005)
            redraw_times.append(ui_times.pop())
    home.HomeScreen.show_scan = show_scan
    return first_frame, ui_times[1:], redraw_times, scan_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_300_000)
    parser.add_argument("--refreshes", type=int, default=20)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's test helpers build the workspace
    from tests.helpers import make_indexed_workspace

    root = Path(tempfile.mkdtemp(prefix="vitsae-home-")) / "ws"
    ws, _ = make_indexed_workspace(root)
    set_dir = next(ws.kind_dir("activations").iterdir())
    size_mb = grow_manifest(set_dir, args.images)

    start = time.perf_counter()
    config_mod.from_dict(Manifest, read_json(set_dir / MANIFEST, max_bytes=max(MAX_JSON_BYTES, 1 << 31)), "manifest")
    baseline = time.perf_counter() - start

    first_frame, ui_times, redraw_times, scan_times = asyncio.run(home_timings(root, args.refreshes))
    print(f"workspace {root}: one activation set of {args.images:,} images (manifest {size_mb:.0f} MB)")
    print(f"baseline: parsing the typed manifest, as home did at start and after every change: {baseline:.2f} s")
    print(f"home first frame (app start to the drawn run table):                          {first_frame:.2f} s")
    print(
        f"refresh on the UI thread: median {statistics.median(ui_times) * 1e3:.1f} ms, "
        f"max {max(ui_times) * 1e3:.1f} ms ({len(ui_times)} refreshes)"
    )
    print(
        f"refresh that rebuilds the table, UI thread: median {statistics.median(redraw_times) * 1e3:.1f} ms, "
        f"max {max(redraw_times) * 1e3:.1f} ms"
    )
    print(f"refresh scan in its worker thread: median {statistics.median(scan_times) * 1e3:.1f} ms")
    print(f"first frame vs baseline: {baseline / first_frame:.1f}x sooner")


if __name__ == "__main__":
    main()
