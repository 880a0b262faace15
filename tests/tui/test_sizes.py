"""Every screen at 80x24, 60x20 and 120x40 while a job runs: no number is cut by an ellipsis, and the browser's
image shows whole with its cursor patch, whatever panel is open."""

import re

import pytest

from tests.helpers import start_small_training, wait_for
from vitsae_tui.tui.app import VitsaeApp
from vitsae_tui.tui.widgets.browser_panes import WorkbenchPane

SIZES = [(80, 24), (60, 20), (120, 40)]
CUT_NUMBER = re.compile(r"[0-9][.,:]?…|[+\-−]…")
"""a digit (or a sign) right before an ellipsis: a number cut mid-way"""


def screen_lines(app) -> list[str]:
    return [strip.text for strip in app.screen._compositor.render_strips()]


def cut_numbers(app) -> list[str]:
    return [line for line in screen_lines(app) if CUT_NUMBER.search(line)]


def image_whole(screen) -> bool:
    view = screen.query_one("#image")
    columns, rows = view.shown_cells
    return 0 < columns <= view.size.width and 0 < rows <= view.size.height


async def settle(pilot, app) -> None:
    await pilot.pause(0.4)
    screen = app.screen
    if app.current_mode == "browse" and (screen.attribution_on or screen.edits):
        current = (screen.index, screen.image, screen.target, screen.attribution_on, tuple(screen.edits))
        await wait_for(pilot, lambda: screen.query_one(WorkbenchPane).results[0] == current, 60)
        await pilot.pause(0.3)


@pytest.mark.slow
async def test_every_screen_at_every_size_keeps_numbers_whole_and_the_image_whole(indexed_root):
    app = VitsaeApp(indexed_root)
    async with app.run_test(size=(120, 40)) as pilot:
        await start_small_training(pilot, app, epochs=200)  # a job runs throughout
        views = [
            ("home", ()),
            ("train-model", ()),
            ("import-model", ()),
            ("collect", ()),
            ("train-sae", ()),
            ("index", ()),
            ("compare", ()),
            ("browse", ("down", "down", "down", "down", "down", "right")),  # the cursor on the bottom row
            ("browse", ("1",)),  # a feature open
            ("browse", ("a", "z")),  # the workbench open with an edit
        ]
        problems = []
        for mode, keys in views:
            await app.switch_mode(mode)
            if mode == "browse":
                await wait_for(pilot, lambda: app.screen.index is not None, timeout_s=30)
            await pilot.press(*keys)
            for width, height in SIZES:
                await pilot.resize_terminal(width, height)
                await settle(pilot, app)
                where = f"{mode} {'+'.join(keys)} at {width}x{height}"
                problems += [f"{where}: {line.strip()}" for line in cut_numbers(app)]
                if mode == "browse":
                    screen = app.screen
                    if not image_whole(screen):
                        problems.append(
                            f"{where}: image {screen.query_one('#image').shown_cells} in a "
                            f"{screen.query_one('#image').size} pane"
                        )
            await pilot.resize_terminal(120, 40)
        assert app.jobs.running("train-model"), "the job ran through every size"
        app.jobs.stop_all()
        await wait_for(pilot, lambda: not app.jobs.running(), timeout_s=60)
    assert not problems, "\n".join(problems)


async def test_the_browser_redraws_its_image_when_the_terminal_grows(indexed_root):
    app = VitsaeApp(indexed_root)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.switch_mode("browse")
        await wait_for(pilot, lambda: app.screen.index is not None, timeout_s=30)
        await pilot.pause(0.3)
        small = app.screen.query_one("#image").shown_cells
        await pilot.resize_terminal(120, 40)
        await pilot.pause(0.5)
        large = app.screen.query_one("#image").shown_cells
        assert large[1] > small[1] + 4 and image_whole(app.screen), (small, large)
