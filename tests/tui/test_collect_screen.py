from textual.widgets import Input, Select, Static

from tests.helpers import make_model_run, wait_for
from vitsae_tui.engine.activation_set import ActivationSet
from vitsae_tui.engine.workspace import Workspace
from vitsae_tui.tui.app import VitsaeApp
from vitsae_tui.tui.screens.collect import CollectScreen


async def test_a_small_collection_from_the_collect_screen(tmp_path):
    run = make_model_run(Workspace(tmp_path / "ws"))
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("c")
        screen = app.screen
        assert isinstance(screen, CollectScreen)
        await pilot.pause(0.2)
        assert screen.query_one("#model", Select).value == run
        assert screen.query_one("#hook", Select).value == "blocks.0.resid_post"
        screen.query_one("#hook", Select).value = "blocks.1.resid_pre"
        screen.query_one("#limit", Input).value = "40"
        await pilot.press("s")
        await wait_for(pilot, lambda: app.jobs.get("collect") is not None and not app.jobs.running())
        await pilot.pause(0.3)
        job = app.jobs.get("collect")
        assert job.state == "finished", job.message
        summary = str(screen.query_one("#summary", Static).render())
        assert "40 images" in summary and "1,440 tokens" in summary
        sets = list((tmp_path / "ws" / "activations").iterdir())
        assert len(sets) == 1
        store = ActivationSet(sets[0])
        assert store.n_images == 40 and store.hook == "blocks.1.resid_pre"
        # home lists the set; enter on it describes it on the collect screen
        await pilot.press("escape")
        await pilot.pause(0.3)
        table = app.screen.query_one("#runs")
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        assert [r[0] for r in rows] == ["models", "activations"] and str(rows[1][1]) == "finished"
        table.move_cursor(row=1)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert "complete" in str(app.screen.query_one("#summary", Static).render())


async def test_collect_without_a_model_says_what_to_do(tmp_path):
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("c")
        await pilot.press("s")
        await pilot.pause(0.2)
        assert app.jobs.get("collect") is None
        assert any("pick a model run first" in n.message for n in app._notifications)
