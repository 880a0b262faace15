"""80x24 shows every screen's essentials; 120x40 shows top examples large enough to see the object."""

import pytest
from textual.widgets import Static

from tests.tui.test_main_path import fake_pipeline
from vitsae_tui.engine import events, metrics
from vitsae_tui.tui.app import VitsaeApp
from vitsae_tui.tui.widgets.examples_view import ExamplesView
from vitsae_tui.tui.widgets.metric_plot import MetricPlot
from vitsae_tui.tui.widgets.stage_log import StageLog


async def test_train_sae_at_80x24_shows_a_readable_plot_the_whole_status_and_cycles_plots(tmp_path):
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("a")
        screen = app.screen
        row = metrics.SAEStep(
            "sae-1", 20, 81920, mse=2.5, fvu=0.1, l0=12.0, dead_fraction=0.0, lr=7e-5, tokens_per_s=9e4
        )
        fake_pipeline(
            app,
            [
                events.Started("train-sae", "saes/sae-1", {}),
                events.Metrics("train-sae", row),
                events.Progress("train-sae", 20, 1220, "steps", 1.0, 20.0),
            ],
        )
        await pilot.pause(0.2)
        shown = [plot for plot in screen.query(MetricPlot) if plot.display]
        assert len(shown) == 1 and shown[0].id == "plot_mse" and shown[0].size.height >= 8
        status = screen.query_one("#status", Static)
        assert status.size.height >= 2 and "ETA" in str(status.render()) and "L0 12.0" in str(status.render())
        await pilot.press("v")
        await pilot.pause(0.1)
        assert [p.id for p in screen.query(MetricPlot) if p.display] == ["plot_fvu"]


async def test_the_log_wraps_at_its_own_width_and_loses_nothing(tmp_path):
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("a")
        log = app.screen.query_one("#log", StageLog)
        message = (
            "training sae-1 on cpu (resident data): 64 -> 512 features, 1220 steps of 4096 tokens, input scale 5.859"
        )
        log.write(message)
        await pilot.pause(0.1)
        lines = [strip.text.rstrip() for strip in log.lines]
        assert len(lines) >= 2 and " ".join(lines).split() == message.split()


def test_a_flat_series_at_zero_keeps_a_non_negative_axis():
    plot = MetricPlot("dead %", y_min=0.0)
    plot.refresh = lambda *args, **kwargs: None  # not mounted: only the figure is built
    for step in range(5):
        plot.add("train", step, 0.0)
    plot.redraw()
    low, high = plot.plt._active.monitor.ylim[0]  # plotext's own record of the left y axis' limits
    assert low == 0.0 and high > 0.0


@pytest.mark.parametrize("size, min_tile, min_shown", [((80, 24), 20, 2), ((120, 40), 28, 4)])
async def test_top_examples_are_on_screen_and_large_enough(indexed_root, size, min_tile, min_shown):
    app = VitsaeApp(indexed_root)
    async with app.run_test(size=size) as pilot:
        await pilot.press("b")
        await pilot.pause(0.3)
        await pilot.press("1")
        await pilot.pause(0.3)
        examples = app.screen.query_one("#examples", ExamplesView)
        region = examples.region
        assert examples.display and region.height >= 8 and region.bottom <= size[1] - 1, "the examples are on screen"
        assert examples.tile >= min_tile and min(examples.per_page, len(examples.examples)) >= min(
            min_shown, len(examples.examples)
        )
        assert str(app.screen.query_one("#example-caption", Static).render()).startswith("#1/")


@pytest.mark.parametrize("height", [6, 7])
def test_half_blocks_draw_each_pixel_pair_as_one_cell_in_its_own_colours(height):
    import numpy as np
    from PIL import Image
    from rich.console import Console

    from vitsae_tui.tui.widgets.pixel_image import HalfBlocks

    pixels = np.random.default_rng(height).integers(0, 256, (height, 5, 3), dtype=np.uint8)
    pixels[:, 1] = pixels[:, 0]  # a run of equal cells is one segment: it must still draw two cells
    console = Console(width=20, color_system="truecolor")
    rows, row = [], []
    for segment in console.render(HalfBlocks(Image.fromarray(pixels)), console.options):
        if segment.text == "\n":
            rows.append(row)
            row = []
            continue
        style = segment.style
        row += [(ch, style.color.triplet, style.bgcolor and style.bgcolor.triplet) for ch in segment.text]
    assert len(rows) == (height + 1) // 2 and all(len(r) == 5 for r in rows)
    for y, cells in enumerate(rows):
        for x, (char, color, bgcolor) in enumerate(cells):
            top = tuple(pixels[2 * y, x])
            if 2 * y + 1 < height:  # the lower half drawn in the bottom pixel's colour over the top one's
                assert (char, tuple(color), tuple(bgcolor)) == ("▄", tuple(pixels[2 * y + 1, x]), top)
            else:  # an odd last row: the upper half alone
                assert (char, tuple(color), bgcolor) == ("▀", top, None)
