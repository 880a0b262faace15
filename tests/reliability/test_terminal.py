"""Tiny and odd terminal sizes never crash the app, and a running job carries on through them."""

import pytest
from textual.widgets import Input

from tests.helpers import make_indexed_workspace, wait_for
from vitsae_tui.tui.app import VitsaeApp

MODES = ("home", "train-model", "collect", "train-sae", "browse")


@pytest.mark.slow
async def test_resizing_to_40x12_and_back_while_a_job_runs(tmp_path):
    ws, _sae = make_indexed_workspace(tmp_path / "ws")
    app = VitsaeApp(ws.root)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("t")
        app.screen.query_one("#n_train", Input).value = "640"
        await pilot.press("s")
        await wait_for(
            pilot,
            lambda: (
                (job := app.jobs.get("train-model"))
                and job.progress
                and job.progress.unit == "steps"
                and job.progress.done >= 1
            ),
        )
        for size in ((40, 12), (80, 24), (40, 12), (200, 60), (80, 24)):
            await pilot.resize_terminal(*size)
            for mode in MODES:
                await app.switch_mode(mode)
                await pilot.pause(0.15)
                assert app.screen.is_mounted and app.size == size
        done_before = app.jobs.get("train-model").progress.done
        await wait_for(pilot, lambda: app.jobs.get("train-model").progress.done > done_before)
        assert app.jobs.running("train-model")  # the job ran on through every resize
        app.jobs.stop_all()
        await app.jobs.wait_all()
    assert app.return_code in (None, 0)
    assert app.jobs.get("train-model").state == "stopped"
