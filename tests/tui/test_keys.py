"""Every key in the README's Keys table, pressed on its screen, does its one documented thing."""

import pytest
from textual.widgets import DataTable, Select

from tests.helpers import answer, start_small_training, wait_for
from vitsae_tui.engine.cards import one_per_image
from vitsae_tui.tui.app import VitsaeApp
from vitsae_tui.tui.screens.browser import BrowserScreen
from vitsae_tui.tui.screens.confirm import ConfirmScreen
from vitsae_tui.tui.widgets.examples_view import ExamplesView


@pytest.mark.slow
async def test_browser_keys(indexed_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = VitsaeApp(indexed_root)
    async with app.run_test(size=(110, 36)) as pilot:
        await pilot.press("b")
        await pilot.pause(0.3)
        s = app.screen
        assert isinstance(s, BrowserScreen) and s.focused is s.query_one("#image")
        for key, cursor in (("right", 1), ("down", 7), ("l", 8), ("j", 14), ("h", 13), ("k", 7)):
            await pilot.press(key)
            assert s.cursor == cursor, key
        await pilot.press("n")
        assert s.image == 1
        await pilot.press("p")
        assert s.image == 0
        await pilot.press("c")
        assert s.class_filter == 0 and s.index.store.labels()[s.image] == 0
        top = s.index.top_features(s.image, s.cursor, 12)
        assert len(top) >= 3
        await pilot.press("2")
        assert s.feature == top[1][0]
        await pilot.press("escape")  # closes the feature
        assert s.feature is None
        await pilot.press("enter")  # on the image: the patch's strongest feature
        assert s.feature == top[0][0]
        await pilot.press("escape", "tab")
        assert s.focused is s.query_one("#patch-features", DataTable)
        await pilot.press("h")  # in a table, h still moves the patch cursor and never leaves the browser
        assert app.current_mode == "browse" and s.cursor == 6
        top = s.index.top_features(s.image, s.cursor, 12)
        await pilot.press("down", "down", "enter")  # in the patch table: the highlighted row
        assert s.feature == top[2][0] and s.focused is s.query_one("#image"), (
            "the hidden table hands focus to the image"
        )
        await pilot.press("x")
        examples = s.query_one("#examples", ExamplesView)
        assert s.focused is examples and examples.examples == one_per_image(s.index.top_examples(s.feature))
        await pilot.press("right")
        assert examples.selected == 1
        await pilot.press("pagedown")
        assert examples.selected == (examples.per_page if len(examples.examples) > examples.per_page else 0)
        await pilot.press("pageup")
        assert examples.selected == 0
        await pilot.press("h", "l")
        assert app.current_mode == "browse" and s.focused is examples
        await pilot.press("D")
        assert examples.examples == s.index.top_examples(s.feature)
        await pilot.press("D", "right", "enter")  # opens the second image with its cursor on the example's patch
        image, token, _ = examples.examples[1]
        assert (s.image, s.cursor) == (image, token) and s.focused is s.query_one("#image")
        await pilot.press("f")
        feature_list = s.query_one("#feature-list", DataTable)
        assert s.side_mode == "list" and s.focused is feature_list
        await pilot.press("h")
        assert app.current_mode == "browse" and s.side_mode == "list"
        await pilot.press("o")
        assert s.sort == 1
        await pilot.press("d")
        assert feature_list.row_count == s.index.d_sae
        await pilot.press("down", "enter")
        assert s.feature == int(feature_list.coordinate_to_cell_key(feature_list.cursor_coordinate).row_key.value)
        await answer(pilot, "slash", "5")
        assert s.feature == 5
        await answer(pilot, "g", "3")
        assert s.image == 3
        await answer(pilot, "L", *"edge")
        assert s.index.label(5) == "edge"
        await pilot.press("e", "E")
        assert (tmp_path / "image-3-feature-5.png").exists() and (tmp_path / "feature-5.png").exists()
        # with the index list open, keys belong to it: nothing moves and nothing is written
        select = s.query_one("#index", Select)
        select.focus()
        await pilot.press("enter")
        assert select.expanded
        before = (s.image, s.cursor, sorted(p.name for p in tmp_path.iterdir()))
        await pilot.press("e", "right", "n", "j")
        assert (s.image, s.cursor, sorted(p.name for p in tmp_path.iterdir())) == before
        await pilot.press("escape")
        assert not select.expanded and app.current_mode == "browse"
        for _ in range(4):
            await pilot.press("escape")
        assert app.current_mode == "home"


async def test_home_keys(indexed_root):
    app = VitsaeApp(indexed_root, demo_size="tiny")
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause(0.2)
        for key, mode in (("t", "train-model"), ("c", "collect"), ("a", "train-sae"), ("b", "browse")):
            await pilot.press(key)
            await pilot.pause(0.1)
            assert app.current_mode == mode, key
            await pilot.press("escape" if mode != "browse" else "escape")
            await pilot.pause(0.1)
            assert app.current_mode == "home"
        await pilot.press("enter")  # the selected (first) run opens on its screen
        await pilot.pause(0.3)
        assert app.current_mode == "train-model" and "watching" in str(app.screen.query_one("#status").render())
        await pilot.press("escape", "i")
        await wait_for(pilot, lambda: app.jobs.get("index") is not None and not app.jobs.running(), timeout_s=120)
        assert app.jobs.get("index").state == "finished" and app.current_mode == "index"
        await pilot.pause(0.3)
        assert "b opens the browser" in str(app.screen.query_one("#summary").render())
        await pilot.press("escape")
        await pilot.press("g")  # every stage is done: the guided run has nothing to build and opens the browser
        await wait_for(pilot, lambda: app.current_mode == "browse" and app.screen.index is not None, timeout_s=60)
        assert app.jobs.get("pipeline").state == "finished"


@pytest.mark.slow
async def test_stage_screen_keys(indexed_root):
    app = VitsaeApp(indexed_root)
    async with app.run_test(size=(110, 40)) as pilot:
        await start_small_training(pilot, app, epochs=30)
        screen = app.screen
        await pilot.press("v")
        assert screen.plot_choice == 0 and not screen.query_one("#acc_plot").display
        await pilot.press("v", "v")
        assert screen.plot_choice == -1 and screen.query_one("#acc_plot").display
        await pilot.press("x")
        await wait_for(pilot, lambda: not app.jobs.running(), timeout_s=60)
        run = app.jobs.get("train-model").run_dir
        assert app.jobs.get("train-model").state == "stopped"
        await pilot.pause(0.2)
        assert str(screen.query_one("#resume_run", Select).value) in run
        await pilot.press("r")
        await wait_for(pilot, lambda: app.jobs.running("train-model"), timeout_s=10)
        assert app.jobs.get("train-model").title.startswith("resume")
        await pilot.press("escape")
        assert app.current_mode == "home"
        await pilot.press("q")
        await pilot.pause(0.1)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: not app.jobs.running(), timeout_s=60)
        assert app.jobs.get("train-model").state == "stopped"
