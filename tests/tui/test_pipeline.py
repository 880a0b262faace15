import json
import os

import pytest
from textual.widgets import Static

from tests.helpers import wait_for
from vitsae_tui.engine.pipeline import lineage
from vitsae_tui.engine.workspace import Workspace, write_status
from vitsae_tui.tui.app import VitsaeApp
from vitsae_tui.tui.screens.browser import BrowserScreen


@pytest.mark.slow
async def test_guided_run_builds_every_stage_and_opens_the_browser(tmp_path):
    app = VitsaeApp(tmp_path / "ws", demo_size="tiny")
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.screen.scans > 0, timeout_s=10)  # home lists the workspace in a thread
        assert "model missing" in str(app.screen.query_one("#pipeline", Static).render())
        await pilot.press("g")
        seen_modes = set()

        def done():
            seen_modes.add(app.current_mode)
            return isinstance(app.screen, BrowserScreen) and app.screen.index is not None

        await wait_for(pilot, done, timeout_s=300)
        assert {"train-model", "collect", "train-sae"} <= seen_modes
        job = app.jobs.get("pipeline")
        assert job.state == "finished", job.message
        assert [s.state for s in lineage(app.workspace)] == ["done"] * 4
        await pilot.press("escape", "escape")
        await pilot.pause(0.5)
        text = str(app.screen.query_one("#pipeline", Static).render())
        assert text.count("done") == 4 and "b browses them" in str(app.screen.query_one("#next", Static).render())


async def test_watching_a_run_follows_new_rows(tmp_path):
    ws = Workspace(tmp_path / "ws")
    run = ws.new_run("saes", "sae")
    write_status(run, "running", step=10, total_steps=100)
    status = json.loads((run / "status.json").read_text())
    status["pid"] = os.getppid()
    (run / "status.json").write_text(json.dumps(status))
    row = {"kind": "step", "step": 10, "mse": 1.0, "fvu": 0.5, "l0": 20.0, "dead_fraction": 0.0, "tokens_per_s": 1.0}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("a")
        screen = app.screen
        screen.show_run(run)
        plot = screen.query_one("#plot_fvu")
        assert plot.point_count("train") == 1
        assert "read-only, written by pid" in str(screen.query_one("#status", Static).render())
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps({**row, "step": 20, "fvu": 0.4}) + "\n" + '{"kind": "st')
        await wait_for(pilot, lambda: plot.point_count("train") == 2, timeout_s=5)
        await pilot.pause(1.2)
        assert plot.point_count("train") == 2  # the torn line is not drawn


async def test_enter_on_a_run_opens_its_curves_on_a_fresh_screen(tmp_path):
    ws = Workspace(tmp_path / "ws")
    run = ws.new_run("models", "demo")
    write_status(run, "finished")
    rows = [{"kind": "step", "step": s, "train_loss": 2.0 / s, "train_accuracy": 0.1 * s} for s in range(1, 6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause(0.2)
        await pilot.press("enter")
        await pilot.pause(0.5)
        assert app.current_mode == "train-model"
        assert app.screen.query_one("#loss_plot").point_count("train") == 5
        assert "watching demo-1: finished" in str(app.screen.query_one("#status", Static).render())


def test_resuming_a_run_another_process_writes_leaves_its_status_alone(tmp_path):
    import subprocess
    import sys
    import threading

    from tests.helpers import Collector, tiny_train_config
    from vitsae_tui.engine.errors import StageError
    from vitsae_tui.engine.stages.train_model import run as train_model

    ws = Workspace(tmp_path / "ws")
    run = ws.new_run("models", "demo")
    write_status(run, "stopped", step=3)
    before = (run / "status.json").read_text()
    holder = subprocess.Popen(  # another process that has claimed the run and is writing it
        [
            sys.executable,
            "-c",
            f"from vitsae_tui.engine.workspace import claim_run; c = claim_run({str(run)!r}); "
            "print('held', flush=True); import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        try:
            train_model(tiny_train_config(), ws, Collector(), threading.Event(), resume=run.name)
            raise AssertionError("expected a refusal")
        except StageError as e:
            assert f"being written by process {holder.pid}" in str(e)
    finally:
        holder.kill()
        holder.wait()
    assert (run / "status.json").read_text() == before


async def test_the_guided_run_on_a_folder_lineage_reads_that_folder_at_every_stage(tmp_path):
    from tests.engine.test_folder_lineage import make_image_folder, train_on
    from vitsae_tui.engine.activation_set import ActivationSet
    from vitsae_tui.engine.config import DataConfig
    from vitsae_tui.engine.data import load_dataset
    from vitsae_tui.engine.workspace import read_jsonl

    ws = Workspace(tmp_path / "ws")
    pets = make_image_folder(tmp_path / "pets").resolve()
    train_on(ws, str(pets))  # the model a new user trains on her folder from the t form
    app = VitsaeApp(ws.root, demo_size="tiny")
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.screen.scans > 0, timeout_s=10)
        await pilot.press("g")
        assert app.jobs.get("pipeline").title == "guided run on folder pets/"
        await wait_for(pilot, lambda: isinstance(app.screen, BrowserScreen) and app.screen.index is not None, 300)
        assert app.jobs.get("pipeline").state == "finished"
    sets = [ActivationSet(run.path) for run in ws.runs("activations")]
    assert sorted(s.provenance.split for s in sets) == ["train", "val"]
    assert all(s.provenance.data.dataset == str(pets) and "synthetic" not in s.path.name for s in sets)
    val = next(s for s in sets if s.provenance.split == "val")
    assert val.n_images == len(load_dataset(ws, DataConfig(dataset=str(pets)), "val")) > 0
    (sae,) = ws.runs("saes")
    evals = [row for row in read_jsonl(sae.path / "metrics.jsonl") if row.get("kind") == "eval"]
    assert evals and all(row["eval_split"] == "val" and row["eval_images"] == val.n_images for row in evals)
