import pytest
from textual.widgets import DataTable, Input, Static

from tests.engine.test_train_sae import planted
from tests.helpers import wait_for
from vitsae_tui.engine.workspace import Workspace
from vitsae_tui.tui.app import VitsaeApp
from vitsae_tui.tui.screens.compare import CompareScreen
from vitsae_tui.tui.screens.train_sae import TrainSAEScreen
from vitsae_tui.tui.widgets.metric_plot import MetricPlot
from vitsae_tui.tui.widgets.scatter_plot import ScatterPlot


def table_cells(screen) -> list[list[str]]:
    table = screen.query_one(DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


@pytest.mark.slow
async def test_a_sweep_started_from_the_sae_screen_appears_live_on_the_compare_screen(tmp_path):
    ws = Workspace(tmp_path / "ws")
    planted(ws, n_images=200)
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("a")
        screen = app.screen
        assert isinstance(screen, TrainSAEScreen)
        values = {
            "arch": "jumprelu,topk",
            "l0_coeff": "0.001,0.03",
            "k": "3",
            "expansion": "4",
            "batch_size": "1024",
            "tokens": "1200000",
            "lr": "0.01",
        }
        for key, value in values.items():
            screen.query_one(f"#{key}", Input).value = value
        await pilot.press("s")
        await wait_for(pilot, lambda: app.jobs.running())
        # the SAE screen plots the sweep's first SAE only
        await wait_for(pilot, lambda: screen.query_one("#plot_l0", MetricPlot).point_count("train") > 0)
        await app.switch_mode("compare")
        compare = app.screen
        assert isinstance(compare, CompareScreen)
        # points appear while the sweep trains: its SAEs show their training L0 and FVU until evaluated
        await wait_for(
            pilot, lambda: [r[-1] for r in table_cells(compare)].count("live") == 3 or not app.jobs.running(), 60
        )
        assert app.jobs.running(), "the sweep ended before its points were seen live"
        await wait_for(pilot, lambda: not app.jobs.running(), timeout_s=120)
        assert app.jobs.get("train-sae").state == "finished"
        await pilot.pause(1.5)  # the next refresh reads the final evaluations
        rows = table_cells(compare)
        assert [r[1] for r in rows] == ["jump λ0.03 x4", "jump λ0.001 x4", "topk k3 x4"]
        assert all(r[-1] == "finished" for r in rows)
        assert any(r[0].startswith("★") for r in rows)
        assert compare.query_one("#plot_fvu", ScatterPlot).drawn_points == 3
        assert "3 SAEs" in str(compare.query_one("#compare-status", Static).render())
        sae_screen_rows = screen.query_one("#plot_l0", MetricPlot).point_count("train")
        assert sae_screen_rows == 1171 // 20 + 1  # one SAE's rows (every 20th step and the last), not three SAEs'
        # enter opens the highlighted SAE's run on the SAE screen; b refuses until it is indexed
        compare.query_one(DataTable).move_cursor(row=2)
        await pilot.press("b")
        await pilot.pause(0.2)
        assert any("no feature index yet" in n.message for n in app._notifications)
        await pilot.press("enter")
        await pilot.pause(0.5)
        assert isinstance(app.screen, TrainSAEScreen) and app.screen.shown_run.endswith("sae-3")


async def test_the_compare_screen_without_sets_or_saes_says_what_to_do(tmp_path):
    ws = Workspace(tmp_path / "ws")
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("v")
        assert isinstance(app.screen, CompareScreen)
        assert "collect one" in str(app.screen.query_one("#compare-status", Static).render())
        await pilot.press("b")
        await pilot.pause(0.1)
        assert any("no SAE selected" in n.message for n in app._notifications)
    planted(ws, n_images=40)
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("v")
        assert "no evaluated SAE" in str(app.screen.query_one("#compare-status", Static).render())
        assert app.screen.query_one(DataTable).row_count == 0
        assert app.screen.query_one("#plot_fvu", ScatterPlot).drawn_points == 0


def test_plot_axes_are_round_evenly_spaced_and_stay_in_range():
    from vitsae_tui.tui.widgets.axes import ticks

    for low, high in ((72.8, 145.7), (-0.32, 0.19), (0.0031, 0.0094), (5.0, 5.0)):
        values, labels = ticks(low, high, False)
        steps = {round(b - a, 9) for a, b in zip(values, values[1:])}
        assert len(steps) == 1 and values[0] <= low and values[-1] >= high, (low, high, values)
        assert all(len(label) <= 6 for label in labels), labels
    values, labels = ticks(-2.3, 0.4, True)  # a log axis: labelled by value, not by exponent
    assert labels == ["0.001", "0.01", "0.1", "1", "10"]


async def test_one_sae_gets_sensible_ranges_and_kl_recovered_never_passes_1():
    from textual.app import App

    from vitsae_tui.tui.widgets.scatter_plot import ScatterPlot

    class One(App):
        def compose(self):
            yield ScatterPlot("FVU", "L0", "FVU", id="fvu")
            yield ScatterPlot("KL", "L0", "KL recovered", log_y=False, y_ceiling=1.0, id="kl")

    app = One()
    async with app.run_test(size=(60, 30)) as pilot:
        app.query_one("#fvu", ScatterPlot).show({"a": [(12.0, 0.063)]}, None)
        app.query_one("#kl", ScatterPlot).show({"a": [(12.0, 0.97)]}, None)
        await pilot.pause(0.1)
        kl_ticks, _ = app.query_one("#kl", ScatterPlot).axis_ticks["y"]
        assert kl_ticks[-1] == 1.0 and kl_ticks[0] < 0.97
        fvu_ticks, fvu_labels = app.query_one("#fvu", ScatterPlot).axis_ticks["y"]
        assert fvu_ticks[0] < -1.2 < fvu_ticks[-1] and "0.05" in fvu_labels  # log10(0.063) inside, by value
