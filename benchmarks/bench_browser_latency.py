"""Feature-browser latency: time from a key press to the redrawn widgets, headless, on an existing index.

    python benchmarks/bench_browser_latency.py --workspace WS [--index NAME] [--presses 60]

Prints the median and 90th percentile per action (patch move, image switch, feature switch, a workbench edit of
the open feature and its undo, target ≤ 150 ms), end to end through
Textual (key event, handler, layout, render) minus the cost of a key with no binding measured in the same run,
which is the test harness's own overhead. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from vitsae_tui.tui.app import VitsaeApp
from vitsae_tui.tui.widgets.browser_panes import WorkbenchPane


async def measure(workspace: str, index: str | None, presses: int) -> dict[str, list[float]]:
    app = VitsaeApp(workspace)
    timings: dict[str, list[float]] = {
        "no-op key (harness)": [],
        "move patch cursor": [],
        "switch image": [],
        "switch feature": [],
        "workbench edit": [],
    }
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("b")
        await pilot.pause(0.5)
        screen = app.screen
        if index:
            screen.query_one("#index").value = index
            await pilot.pause(0.5)
        keys = {
            "no-op key (harness)": ["w"],
            "move patch cursor": ["right", "down", "left", "up"],
            "switch image": ["n", "p", "n", "n"],
        }
        for action, cycle in keys.items():
            for i in range(presses):
                start = time.perf_counter()
                await pilot.press(cycle[i % len(cycle)])
                await pilot.pause()  # until the screen has processed the key and refreshed
                timings[action].append(time.perf_counter() - start)
        for i in range(presses):
            feature = screen.index.top_features(screen.image, screen.cursor, 9)
            start = time.perf_counter()
            await pilot.press(str(1 + i % max(1, len(feature))))
            await pilot.pause()
            timings["switch feature"].append(time.perf_counter() - start)
            await pilot.press("escape")
            await pilot.pause()

        def computed() -> bool:  # the edit's effect, computed in the workbench's thread, is on the screen
            key = (screen.index, screen.image, screen.target, screen.attribution_on, tuple(screen.edits))
            return not screen.edits or screen.query_one(WorkbenchPane).results[0] == key

        async def until_computed() -> None:
            while not computed():
                await asyncio.sleep(0.002)
            await pilot.pause()

        await pilot.press("1")  # a feature open: z zeroes it on the cursor patch, u undoes; bars and heatmap redraw
        await pilot.pause()
        await pilot.press("z")  # the first edit loads the model
        await until_computed()
        await pilot.press("u")
        await pilot.pause()
        for i in range(presses):
            start = time.perf_counter()
            await pilot.press("z" if i % 2 == 0 else "u")
            await until_computed()  # until the thread's result is drawn, not only the key handled
            timings["workbench edit"].append(time.perf_counter() - start)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--index")
    parser.add_argument("--presses", type=int, default=60)
    args = parser.parse_args()
    timings = asyncio.run(measure(args.workspace, args.index, args.presses))
    harness = statistics.median(timings.pop("no-op key (harness)")) * 1000
    print(f"harness overhead per key: {harness:.1f} ms (subtracted below)")
    for action, values in timings.items():
        values_ms = sorted(v * 1000 - harness for v in values)
        print(
            f"{action:18s} median {statistics.median(values_ms):6.1f} ms   "
            f"p90 {values_ms[int(0.9 * len(values_ms))]:6.1f} ms"
            f"   (target median <= {150 if action == 'workbench edit' else 100} ms, n={len(values_ms)})"
        )


if __name__ == "__main__":
    main()
