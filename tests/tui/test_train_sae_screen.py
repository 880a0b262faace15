import numpy as np
from textual.widgets import Input, Select, Static

from tests.helpers import wait_for, write_activation_set
from vitsae_tui.engine.workspace import Workspace
from vitsae_tui.tui.app import VitsaeApp
from vitsae_tui.tui.screens.train_sae import TrainSAEScreen
from vitsae_tui.tui.widgets.metric_plot import MetricPlot


async def test_a_tiny_sae_trains_from_the_screen_and_the_plots_update(tmp_path):
    ws = Workspace(tmp_path / "ws")
    rng = np.random.default_rng(0)
    write_activation_set(ws, "tiny", rng.normal(size=(100, 36, 16)))
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("a")
        screen = app.screen
        assert isinstance(screen, TrainSAEScreen)
        assert screen.query_one("#activations", Select).value == "tiny"
        for key, value in {"expansion": "4", "batch_size": "256", "tokens": "150000", "lr": "0.005"}.items():
            screen.query_one(f"#{key}", Input).value = value
        await pilot.press("s")
        # the plots receive points while the job runs, redrawn by the screen's timer
        await wait_for(pilot, lambda: screen.query_one("#plot_mse", MetricPlot).drawn_points > 0)
        await wait_for(pilot, lambda: not app.jobs.running())
        await pilot.pause(0.5)
        job = app.jobs.get("train-sae")
        assert job.state == "finished", job.message
        for key in ("mse", "fvu", "l0", "dead_fraction"):
            assert screen.query_one(f"#plot_{key}", MetricPlot).point_count("train") >= 20, key
        assert screen.query_one("#plot_fvu", MetricPlot).point_count("held-out") >= 1
        eval_text = str(screen.query_one("#eval", Static).render())
        assert "eval @ step 585" in eval_text and "density" in eval_text
        run_dir = tmp_path / "ws" / "saes" / "sae-1"
        assert (run_dir / "sae.safetensors").exists() and (run_dir / "saelens" / "cfg.json").exists()


async def test_bad_hyperparameters_are_reported(tmp_path):
    ws = Workspace(tmp_path / "ws")
    write_activation_set(ws, "tiny", np.zeros((10, 36, 8)))
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("a")
        app.screen.query_one("#bandwidth", Input).value = "-1"
        await pilot.press("s")
        await pilot.pause(0.2)
        assert app.jobs.get("train-sae") is None
        assert any("bandwidth" in n.message for n in app._notifications)
