import json

import pytest
from textual.widgets import Input, RichLog

from tests.helpers import wait_for
from vitsae_tui.engine.workspace import read_jsonl
from vitsae_tui.tui.app import VitsaeApp
from vitsae_tui.tui.screens.train_model import TrainModelScreen
from vitsae_tui.tui.widgets.metric_plot import MetricPlot, downsample


async def test_demo_training_from_the_train_screen(tmp_path):
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("t")
        screen = app.screen
        assert isinstance(screen, TrainModelScreen)
        for key, value in {"n_train": "96", "epochs": "2", "batch_size": "16"}.items():
            screen.query_one(f"#{key}", Input).value = value
        await pilot.press("s")
        await wait_for(pilot, lambda: app.jobs.get("train-model") is not None and not app.jobs.running())
        await pilot.pause(0.5)
        job = app.jobs.get("train-model")
        assert job.state == "finished", job.message
        run_dir = tmp_path / "ws" / "models" / "demo-1"
        assert (run_dir / "best.pt").exists() and (run_dir / "last.pt").exists()
        rows = read_jsonl(run_dir / "metrics.jsonl")
        assert [r["kind"] for r in rows].count("epoch") == 2 and any(r["kind"] == "step" for r in rows)
        loss_plot = screen.query_one("#loss_plot", MetricPlot)
        acc_plot = screen.query_one("#acc_plot", MetricPlot)
        assert loss_plot.point_count("train") >= 2 and loss_plot.point_count("val") == 2
        assert acc_plot.point_count("val") == 2 and loss_plot.drawn_points > 0
        log_text = "\n".join(str(line.text) for line in screen.query_one("#log", RichLog).lines)
        assert "finished" in log_text
        # home lists the run as finished
        await pilot.press("escape")
        await pilot.pause(0.3)
        assert "finished" in json.loads((run_dir / "status.json").read_text())["state"]


@pytest.mark.slow
async def test_switching_screens_keeps_the_job_and_quitting_asks_then_checkpoints(tmp_path):
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("t")
        app.screen.query_one("#n_train", Input).value = "640"
        await pilot.press("s")
        await wait_for(
            pilot,
            lambda: (
                (job := app.jobs.get("train-model"))
                and job.progress
                and job.progress.unit == "steps"
                and job.progress.done >= 2
            ),
        )
        await pilot.press("escape")  # to home: the job keeps running
        await pilot.pause(0.5)
        assert app.jobs.running("train-model")
        await pilot.press("q")
        await pilot.pause(0.2)
        assert app.screen.__class__.__name__ == "ConfirmScreen"
        await pilot.press("y")
        await wait_for(pilot, lambda: not app.jobs.running(), timeout_s=60)
    status = json.loads((tmp_path / "ws" / "models" / "demo-1" / "status.json").read_text())
    assert status["state"] == "stopped"
    assert (tmp_path / "ws" / "models" / "demo-1" / "last.pt").exists()


async def test_bad_form_values_are_reported_not_raised(tmp_path):
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("t")
        app.screen.query_one("#epochs", Input).value = "many"
        await pilot.press("s")
        await pilot.pause(0.2)
        assert app.jobs.get("train-model") is None
        assert any("epochs must be a whole number" in n.message for n in app._notifications)


def test_downsample_bins_to_the_width():
    xs = list(range(1000))
    ys = [float(x) for x in xs]
    dx, dy = downsample(xs, ys, 50)
    assert len(dx) <= 50 and dy[0] == sum(range(20)) / 20
    assert downsample(xs[:10], ys[:10], 50) == (xs[:10], ys[:10])
