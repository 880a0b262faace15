"""The app's main path as a new user walks it: one run per screen, the chosen lineage, quitting, the first minute."""

import json

import pytest
from textual.widgets import Input, Static

from tests.helpers import make_indexed_workspace, write_activation_set
from vitsae_tui.engine import events, metrics
from vitsae_tui.engine.workspace import Workspace, write_status
from vitsae_tui.tui.app import VitsaeApp
from vitsae_tui.tui.jobs import Job
from vitsae_tui.tui.screens.confirm import ConfirmScreen
from vitsae_tui.tui.screens.train_model import TrainModelScreen
from vitsae_tui.tui.screens.train_sae import TrainSAEScreen
from vitsae_tui.tui.widgets.metric_plot import MetricPlot


def fake_pipeline(app: VitsaeApp, *batches: list[events.Event]) -> Job:
    """A running pipeline job fed by hand: the screens see exactly these events, in these batches."""
    job = Job("pipeline", "guided run (demo)")
    app.jobs.jobs["pipeline"] = job
    for batch in batches:
        for event in batch:
            job.report(event)
        app.jobs._drain()
    return job


def status_text(screen) -> str:
    return str(screen.query_one("#status", Static).render())


async def test_the_sae_screen_reads_only_its_own_rows_of_a_pipeline_job(tmp_path):
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("a")
        screen = app.screen
        model_row = metrics.ModelStep(step=5, epoch=0.1, train_loss=1.0, train_accuracy=0.5, lr=1e-3)
        fake_pipeline(
            app,
            [
                events.Started("train-model", "models/demo-1", {"epochs": 8}),
                events.Metrics("train-model", model_row),
                events.Finished("train-model", "models/demo-1", {}),
            ],
            [
                events.Started("train-sae", "saes/sae-1", {"tokens": 5_000_000}),
                events.Progress("train-sae", 20, 1220, "steps", 1.0, 20.0),
            ],
        )
        await pilot.pause(0.1)
        assert isinstance(screen, TrainSAEScreen)
        assert "20/1,220 steps · ETA" in status_text(screen) and "MSE" not in status_text(screen)
        sae_row = metrics.SAEStep(
            "sae-1", 20, 81920, mse=2.5, fvu=0.1, l0=12.0, dead_fraction=0.0, lr=7e-5, tokens_per_s=9e4
        )
        fake_pipeline(
            app, [events.Metrics("train-sae", sae_row), events.Progress("train-sae", 40, 1220, "steps", 2.0, 20.0)]
        )
        await pilot.pause(0.1)
        assert "MSE 2.5 · FVU 0.1000 · L0 12.0" in status_text(screen)
        assert screen.query_one("#tokens", Input).value == "5000000"


async def test_a_new_run_replaces_a_watched_one_and_the_form_shows_its_settings(tmp_path):
    ws = Workspace(tmp_path / "ws")
    old = ws.new_run("models", "demo")
    write_status(old, "stopped", step=25, total_steps=376)
    rows = [{"kind": "step", "step": s, "train_loss": 5.0, "train_accuracy": 0.1} for s in (10, 20)]
    (old / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (old / "config.json").write_text(
        json.dumps({"preset": "demo", "epochs": 5, "data": {"dataset": "synthetic", "n_train": 300}})
    )
    app = VitsaeApp(ws.root)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause(0.2)
        await pilot.press("enter")  # open the stopped run: watched read-only, with its own settings and progress
        await pilot.pause(0.3)
        screen = app.screen
        assert isinstance(screen, TrainModelScreen) and "watching demo-1: stopped" in status_text(screen)
        assert screen.query_one("#epochs", Input).value == "5" and screen.query_one("#progress").progress == 25
        loss = screen.query_one("#loss_plot", MetricPlot)
        assert loss.point_count("train") == 2
        config = {
            "preset": "demo",
            "epochs": 3,
            "batch_size": 32,
            "lr": 0.002,
            "seed": 7,
            "device": "cpu",
            "data": {"dataset": "synthetic", "n_train": 500},
        }
        new_row = metrics.ModelStep(step=1, epoch=0.02, train_loss=2.0, train_accuracy=0.3, lr=1e-3)
        fake_pipeline(
            app,
            [
                events.Started("train-model", str(ws.root / "models" / "demo-2"), config),
                events.Metrics("train-model", new_row),
                events.Progress("train-model", 1, 48, "steps", 1.0, 1.0),
            ],
        )
        await pilot.pause(0.1)
        assert "watching" not in status_text(screen) and "1/48 steps" in status_text(screen)
        assert loss.series["train"] == ([1.0], [2.0]), "only the new run's curve is drawn"
        assert screen.query_one("#epochs", Input).value == "3" and screen.query_one("#n_train", Input).value == "500"
        assert screen.query_one("#epochs", Input).disabled, "the form is locked while its job runs"
        await pilot.pause(1.2)  # the watcher's poll must not come back
        assert "watching" not in status_text(screen)


async def test_resuming_draws_the_runs_curve_up_to_its_checkpoint_once(tmp_path):
    ws = Workspace(tmp_path / "ws")
    run = ws.new_run("models", "demo")
    rows = [{"kind": "step", "step": s, "train_loss": 1.0 / s, "train_accuracy": 0.1} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    app = VitsaeApp(ws.root)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("t")
        screen = app.screen
        fake_pipeline(
            app,
            [
                events.Started("train-model", str(run), {"epochs": 8}, resumed=True),
                events.Metrics("train-model", metrics.ModelStep(3, 0.06, train_loss=0.2, train_accuracy=0.2, lr=1e-3)),
            ],
        )
        await pilot.pause(0.1)
        assert screen.query_one("#loss_plot", MetricPlot).series["train"][0] == [1.0, 2.0, 3.0]


async def test_every_way_out_asks_first_while_a_job_runs(tmp_path):
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(100, 32)) as pilot:
        quits = [c for c in app.get_system_commands(app.screen) if "quit" in c.title.lower()]
        assert [c.title for c in quits] == ["Quit"], "one Quit entry in the palette"
        job = fake_pipeline(app, [events.Started("train-model", "models/demo-1", {})])
        await quits[0].callback()
        await pilot.pause(0.1)
        assert isinstance(app.screen, ConfirmScreen) and app.is_running
        await pilot.press("n")
        await app.action_quit()  # Textual's own quit action (the built-in palette entry, ctrl+c hints) asks too
        await pilot.pause(0.1)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("escape")
        await pilot.press("ctrl+q")
        await pilot.pause(0.1)
        assert isinstance(app.screen, ConfirmScreen) and not job.stop.is_set()
        job.state = "stopped"  # the answer "yes" stops it with a checkpoint; our fake job has nothing to save
        await pilot.press("y")
        await pilot.pause(0.2)
        assert not app.is_running


async def test_home_tells_a_new_user_to_press_g(tmp_path):
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.1)
        assert "New here? Press g" in str(app.screen.query_one("#next", Static).render())


async def test_home_follows_the_lineage_the_user_built_not_the_newest_set(tmp_path):
    import threading

    import numpy as np

    from tests.helpers import Collector
    from vitsae_tui.engine.config import CollectConfig, DataConfig
    from vitsae_tui.engine.errors import StageError
    from vitsae_tui.engine.pipeline import lineage
    from vitsae_tui.engine.stages.collect import run as collect

    ws, sae = make_indexed_workspace(tmp_path / "ws")
    good = lineage(ws)
    assert [s.state for s in good] == ["done"] * 4
    model, good_set = good[0].run, good[1].run
    try:  # a failed collect from the same model (the folder does not exist)
        collect(
            CollectConfig(model=model, device="cpu", data=DataConfig(dataset=str(tmp_path / "nope"))),
            ws,
            Collector(),
            threading.Event(),
        )
    except StageError:
        pass
    # and a finished set of the same model on other data, newer than everything else
    write_activation_set(ws, "other", np.ones((2, 36, 16), np.float32), model_run=model)
    assert [(s.run, s.state) for s in lineage(ws)] == [(s.run, s.state) for s in good]
    app = VitsaeApp(ws.root)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause(0.2)
        assert app.lineage_run("activations") == good_set and app.lineage_run("saes") == sae
        await pilot.press("a")
        await pilot.pause(0.2)
        assert str(app.screen.query_one("#activations").value) == good_set, "a trains on the shown lineage's set"
        await pilot.press("escape")
        table = app.screen.query_one("#runs")
        await pilot.pause(0.1)
        other_row = table.get_row_index("activations/other")
        while table.cursor_row != other_row:  # the user moves onto the other set: home follows its lineage
            await pilot.press("down" if table.cursor_row < other_row else "up")
        await pilot.pause(0.1)
        text = str(app.screen.query_one("#pipeline", Static).render())
        assert (
            "activations stale other" in text and "sae missing" in text
        )  # its fake provenance names no real checkpoint


async def test_paging_the_palette_before_its_results_are_laid_out_is_harmless(tmp_path):
    import asyncio

    from tests.tui.test_monkey import send_key

    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(80, 24)) as pilot:
        for typed in ("", "t", "zzzz", "tr"):  # a fast typist: no pause between the keystrokes and pgdn
            send_key(app, "ctrl+p")
            for key in [*typed, "pagedown", "pageup", "pagedown"]:
                send_key(app, key)
            await asyncio.sleep(0.3)
            send_key(app, "escape")
            await asyncio.sleep(0.2)
        await pilot.pause(0.2)
        assert app.is_running and app.current_mode == "home"


async def test_the_collect_form_shows_the_running_collections_hook(indexed_root):
    model = Workspace(indexed_root).runs("models")[0].name
    app = VitsaeApp(indexed_root)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("c")
        screen = app.screen
        screen.query_one("#model").clear()  # so that showing the job's model changes the selection
        await pilot.pause(0.1)
        config = {
            "model": model,
            "checkpoint": "last",
            "hook": "blocks.0.resid_mid",
            "split": "val",
            "dtype": "float32",
            "data": {"dataset": "synthetic"},
            "limit": 40,
        }
        fake_pipeline(app, [events.Started("collect", str(indexed_root / "activations" / "x"), config)])
        await pilot.pause(0.3)
        values = {
            key: str(screen.query_one(f"#{key}").value)
            for key in ("model", "checkpoint", "hook", "split", "dtype", "limit")
        }
        assert values == {
            "model": model,
            "checkpoint": "last",
            "hook": "blocks.0.resid_mid",
            "split": "val",
            "dtype": "float32",
            "limit": "40",
        }


async def test_a_stage_screen_says_when_the_guided_run_it_showed_has_ended(tmp_path):
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("t")
        screen = app.screen
        job = fake_pipeline(
            app,
            [events.Started("train-model", "models/demo-1", {}), events.Finished("train-model", "models/demo-1", {})],
        )
        await pilot.pause(0.1)
        assert "the guided run goes on" in status_text(screen)
        job.report(events.Started("collect", "activations/x", {}))
        job.report(events.Finished("pipeline", str(tmp_path), {}))
        app.jobs._drain()
        await pilot.pause(0.1)
        assert status_text(screen).endswith("finished") and "goes on" not in status_text(screen)


async def test_a_bug_in_the_app_ends_it_non_zero_with_its_traceback_in_the_workspace(tmp_path):
    from vitsae_tui.engine.errors import ERROR_LOG

    app = VitsaeApp(tmp_path / "ws")

    def broken() -> None:
        raise ZeroDivisionError("a bug in a handler")

    with pytest.raises(ZeroDivisionError):
        async with app.run_test(size=(80, 24)) as pilot:
            app.call_later(broken)
            await pilot.pause(0.5)
    assert app.return_code == 1
    log = (tmp_path / "ws" / ERROR_LOG).read_text()
    assert "Traceback" in log and "a bug in a handler" in log
