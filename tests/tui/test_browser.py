import shutil
from pathlib import Path

from textual.widgets import ContentSwitcher, DataTable, Static

from tests.helpers import answer, make_indexed_workspace, wait_for
from vitsae_tui.engine.cards import one_per_image
from vitsae_tui.tui.app import VitsaeApp
from vitsae_tui.tui.screens.browser import BrowserScreen
from vitsae_tui.tui.widgets.browser_panes import ImagePane, ImageView, WorkbenchPane
from vitsae_tui.tui.widgets.examples_view import ExamplesView

SNAPSHOT_WORKSPACE = Path("/tmp/vitsae-tui-snapshot-browser")


async def test_image_patch_feature_example_and_back(indexed_root):
    app = VitsaeApp(indexed_root)
    async with app.run_test(size=(110, 36)) as pilot:
        await pilot.press("b")
        await pilot.pause(0.3)
        screen = app.screen
        assert isinstance(screen, BrowserScreen) and screen.index is not None
        title = lambda: str(screen.query_one("#image-title", Static).render())  # noqa: E731
        assert "image 0/95" in title() and "patch 0 (row 0, col 0)" in title()
        await pilot.press("right", "right", "down")
        assert screen.cursor == 8 and "patch 8 (row 1, col 2)" in title()
        await pilot.press("n")
        assert screen.image == 1 and "image 1/95" in title()
        expected = screen.index.top_features(1, 8, 12)
        table = screen.query_one("#patch-features", DataTable)
        assert table.row_count == len(expected) > 0
        assert str(table.get_row_at(0)[0]) == str(expected[0][0])
        await pilot.press("1")  # open the strongest feature of the patch
        await pilot.pause(0.2)
        feature = expected[0][0]
        assert screen.feature == feature
        assert f"feature {feature}" in str(screen.query_one("#feature-stats", Static).render())
        assert f"heatmap of feature {feature}" in title()
        examples = screen.query_one("#examples", ExamplesView)
        top_image, top_token, _ = screen.index.top_examples(feature)[0]
        assert examples.examples == one_per_image(screen.index.top_examples(feature))
        await pilot.press("x", "enter")  # focus the examples; the strongest opens with the cursor on its patch
        await pilot.pause(0.2)
        assert (screen.image, screen.cursor) == (top_image, top_token)
        assert screen.focused is screen.query_one("#image")
        await pilot.press("right")
        assert screen.cursor == min(top_token + 1, top_token - top_token % 6 + 5)
        await pilot.press("escape")  # drop the heatmap
        assert screen.feature is None
        await pilot.press("f")
        assert screen.query_one("#side", ContentSwitcher).current == "list-view"
        feature_list = screen.query_one("#feature-list", DataTable)
        alive = int((screen.index.arrays.density > 0).sum())
        assert feature_list.row_count == alive
        await pilot.press("d")
        assert feature_list.row_count == screen.index.d_sae
        await pilot.press("escape", "escape")
        assert app.screen.__class__.__name__ == "HomeScreen"


async def test_a_state_change_redraws_once_and_a_left_prompt_never_hides_the_run_asked_for(indexed_root):
    app = VitsaeApp(indexed_root)
    async with app.run_test(size=(110, 36)) as pilot:
        await pilot.press("b")
        await wait_for(pilot, lambda: app.screen.index is not None, timeout_s=30)
        screen = app.screen
        pane = screen.query_one(ImagePane)
        drawn = []
        show = pane.show
        pane.show = lambda index, view, no_color: (drawn.append(view), show(index, view, no_color))
        screen.open_image(5, 7)  # image and cursor change together: one redraw
        assert [(v.image, v.cursor) for v in drawn] == [(5, 7)]
        await pilot.press("l")  # the cursor alone
        assert [(v.image, v.cursor) for v in drawn] == [(5, 7), (5, 8)]
        await pilot.press("1")  # a feature opens: its heatmap, once
        assert len(drawn) == 3 and drawn[-1].feature == screen.feature is not None
        await pilot.press("g")  # a prompt left open on the browser...
        await pilot.pause(0.1)
        await app.switch_mode("home")
        await app.open_run("features", screen.index.dir.name)  # ...is closed for the run asked for
        await pilot.pause(0.1)
        assert app.screen is screen


async def test_jump_to_image_and_feature_and_label(indexed_root):
    app = VitsaeApp(indexed_root)
    async with app.run_test(size=(110, 36)) as pilot:
        await pilot.press("b")
        await pilot.pause(0.3)
        screen = app.screen
        await answer(pilot, "g", "4", "2")
        assert screen.image == 42
        await answer(pilot, "g", "9", "9", "9")
        assert screen.image == 42 and any("from 0 to 95" in n.message for n in app._notifications)
        await answer(pilot, "slash", "5")
        assert screen.feature == 5
        await answer(pilot, "L", *"edge")
        await pilot.pause(0.2)
        assert screen.index.label(5) == "edge"
        assert "edge" in str(screen.query_one("#feature-stats", Static).render())
        await pilot.press("c")
        assert screen.class_filter == 0 and screen.index.store.labels()[screen.image] == 0


_snapshot_built = False


def snapshot_app() -> VitsaeApp:
    """An app on a fixed-path workspace (the path is on screen), rebuilt once per test run so it is never stale."""
    global _snapshot_built
    if not _snapshot_built:
        shutil.rmtree(SNAPSHOT_WORKSPACE, ignore_errors=True)
        make_indexed_workspace(SNAPSHOT_WORKSPACE)
        _snapshot_built = True
    return VitsaeApp(SNAPSHOT_WORKSPACE)


def test_image_view_snapshot(snap_compare):
    assert snap_compare(snapshot_app(), press=["b", "right", "down"], terminal_size=(100, 32))


def test_feature_view_snapshot(snap_compare):
    assert snap_compare(snapshot_app(), press=["b", "right", "down", "1", "x"], terminal_size=(100, 32))


def test_workbench_snapshot(snap_compare):
    """The attribution and one edit of the open feature: the panel under the image and the change heatmap."""

    async def settle(pilot) -> None:
        await pilot.press("b", "right", "down", "a", "1", "z")
        screen = pilot.app.screen
        await wait_for(
            pilot,
            lambda: (
                screen.query_one(WorkbenchPane).results[0]
                == (screen.index, screen.image, screen.target, True, tuple(screen.edits))
            ),
            60,
        )
        await pilot.pause(0.2)

    assert snap_compare(snapshot_app(), run_before=settle, terminal_size=(120, 40))


async def test_png_exports_from_the_browser(indexed_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = VitsaeApp(indexed_root)
    async with app.run_test(size=(110, 36)) as pilot:
        await pilot.press("b")
        await pilot.pause(0.3)
        await pilot.press("e")
        assert (tmp_path / "image-0.png").exists()
        await pilot.press("1", "E")
        feature = app.screen.feature
        assert (tmp_path / f"feature-{feature}.png").exists() and (
            tmp_path / f"image-0-feature-{feature}.png"
        ).exists() is False


async def test_under_no_color_the_feature_map_is_drawn_in_brightness(indexed_root, monkeypatch):
    import numpy as np

    monkeypatch.setenv("NO_COLOR", "1")
    app = VitsaeApp(indexed_root)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("b")
        await wait_for(pilot, lambda: app.screen.index is not None, timeout_s=30)
        await pilot.press("1")
        await pilot.pause(0.3)
        screen = app.screen
        assert app.no_color and screen.feature is not None
        pane = screen.query_one(ImagePane)
        view = ImageView(screen.image, screen.cursor, screen.feature, None)
        picture = np.asarray(pane.composed_image(screen.index, view, pane.pixel_size(6), app.no_color), dtype=np.int16)
        grid_lines = (picture == 255).all(-1)  # the cursor outline
        channels = picture[~grid_lines]
        assert np.abs(channels[:, 0] - channels[:, 1]).max() <= 1, "drawn in greys: brightness carries the heat"
