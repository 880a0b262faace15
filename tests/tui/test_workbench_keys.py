"""The workbench keys of the browser: a attributes, t picks the class, z + - m edit the open feature on the cursor
patch (A: on every patch), u undoes; every number shown is the CLI's JSON for the same edits."""

import pytest
from textual.widgets import Static

from tests.engine.test_workbench import DRIVEN, PLANTED
from tests.helpers import answer, open_browser, wait_for
from vitsae_tui.cli_print import edit_json
from vitsae_tui.engine.workbench import Edit
from vitsae_tui.tui.app import VitsaeApp
from vitsae_tui.tui.widgets.browser_panes import WorkbenchPane


def panel_text(app) -> str:
    return str(app.screen.query_one("#workbench", Static).render())


async def settled(pilot, app) -> str:
    """The panel once the workbench's thread has computed what the keys asked for."""
    screen = app.screen
    current = lambda: (screen.index, screen.image, screen.target, screen.attribution_on, tuple(screen.edits))  # noqa: E731
    await wait_for(
        pilot, lambda: screen.query_one(WorkbenchPane).results[0] == current() and "…" not in panel_text(app), 60
    )
    await pilot.pause(0.05)
    return panel_text(app)


async def test_attribute_pick_a_class_edit_undo_and_the_numbers_match_the_cli(planted):
    ws, _ = planted
    app = VitsaeApp(ws.root)
    async with app.run_test(size=(140, 48)) as pilot:
        screen = await open_browser(pilot, app)
        await pilot.press("z")  # no feature open: a warning, no edit
        assert screen.edits == () and not screen.query_one("#workbench").display
        await pilot.press("a")
        assert screen.query_one("#workbench").display
        assert "attribution (exact)" in await settled(pilot, app)
        await answer(pilot, "t", str(DRIVEN))
        assert screen.target == DRIVEN
        text = await settled(pilot, app)
        assert f"attribution (exact): {PLANTED} " in text  # the planted feature drives that class
        assert "heatmap of |attribution|" in str(screen.query_one("#image-title", Static).render())
        name = screen.query_one(WorkbenchPane).bench.class_names[DRIVEN]
        assert text.splitlines()[1].startswith(f"target {name}"), "the target's own probability comes first"

        await answer(pilot, "slash", str(PLANTED))
        await pilot.press("z")
        assert screen.edits == (Edit((PLANTED,), "zero", 0.0, (0,)),)
        text = await settled(pilot, app)
        bench = screen.query_one(WorkbenchPane).bench
        expected = edit_json(bench, bench.intervene(screen.image, tuple(screen.edits), DRIVEN))
        before, after = expected["probs_before"], expected["probs_after"]
        others = sorted((c for c in range(len(before)) if c != DRIVEN), key=lambda c: -max(before[c], after[c]))[:3]
        assert f"zero feature {PLANTED} on patch 0" in text
        rows = [row for row in text.splitlines() if "→" in row]
        assert rows[0].startswith(f"target {name}")
        for c, row in zip([DRIVEN, *others], rows):  # the class, its probability before → after, as the CLI's JSON
            assert expected["class_names"][c][:14] in row and f"{before[c]:.3f} → " in row, row
            assert f" {after[c]:.3f}" in row, row
        predicted = max(range(len(before)), key=lambda c: before[c])
        assert any("predicted" in row for row in rows) == (predicted in [DRIVEN, *others])
        assert "heatmap of |Δ target logit|" in str(screen.query_one("#image-title", Static).render())

        await pilot.press("A", "plus", "minus")
        assert [edit.patches for edit in screen.edits] == [(0,), None, None]
        text = await settled(pilot, app)
        assert "×2 feature" in text and "×0.5 feature" in text
        await pilot.press("u", "u", "m")
        (clamp,) = screen.edits[1:]
        assert clamp.mode == "clamp" and clamp.value == pytest.approx(
            float(screen.index.arrays.max_activation[PLANTED])
        )
        assert f"clamp to {clamp.value:.3f} feature" in await settled(pilot, app)
        await pilot.press("u", "u", "u")  # one more than there are: a warning
        assert screen.edits == () and "attribution (exact)" in await settled(pilot, app)
        await pilot.press("n")  # another image: edits are per image, the attribution follows
        assert screen.image == 1 and "attribution (exact)" in await settled(pilot, app)
        await pilot.press("a")
        assert not screen.query_one("#workbench").display
        assert app.is_running


async def test_t_takes_a_class_by_name_or_number_and_the_cli_does_too(planted, capsys):
    from vitsae_tui.cli import main

    ws, sae = planted
    app = VitsaeApp(ws.root)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_browser(pilot, app)
        names = screen.model_class_names()
        await answer(pilot, "t", *names[DRIVEN][:-1])  # the start of its name
        assert screen.target == DRIVEN
        await answer(pilot, "t", "nothing like it")
        assert screen.target == DRIVEN  # refused with a sentence, the target kept
    assert (
        main(
            ["attribute", "--sae", sae, "--image", "0", "--class", names[DRIVEN], "--json", "--workspace", str(ws.root)]
        )
        == 0
    )
    assert f'"target": {DRIVEN}' in capsys.readouterr().out


async def test_the_attribution_runs_off_the_ui_thread(planted, monkeypatch):
    import threading

    from vitsae_tui.engine.workbench import Workbench

    release = threading.Event()
    attribute = Workbench.attribute

    def slow_attribute(self, *args, **kwargs):
        release.wait(20)  # a big model on a slow machine
        return attribute(self, *args, **kwargs)

    monkeypatch.setattr(Workbench, "attribute", slow_attribute)
    ws, _ = planted
    app = VitsaeApp(ws.root)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_browser(pilot, app)
        await pilot.press("a")
        await pilot.pause(0.2)
        assert "attributing…" in panel_text(app)
        await pilot.press("n", "right")  # the browser answers while the attribution is still being computed
        assert screen.image == 1 and screen.cursor == 1 and not release.is_set()
        release.set()
        assert "attribution (exact)" in await settled(pilot, app)
