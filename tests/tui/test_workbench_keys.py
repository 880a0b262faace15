"""The workbench keys of the browser: a attributes, t picks the class, z + - m edit the open feature on the cursor
patch (A: on every patch), u undoes; every number shown is the CLI's JSON for the same edits."""

import pytest
from textual.widgets import Static

from tests.engine.test_workbench import DRIVEN, PLANTED
from tests.helpers import answer, open_browser
from vitsae_tui.cli_progress import edit_json
from vitsae_tui.engine.workbench import Edit
from vitsae_tui.tui.app import VitsaeApp


def panel_text(app) -> str:
    return str(app.screen.query_one("#workbench", Static).render())


async def test_attribute_pick_a_class_edit_undo_and_the_numbers_match_the_cli(planted):
    ws, _ = planted
    app = VitsaeApp(ws.root)
    async with app.run_test(size=(140, 48)) as pilot:
        screen = await open_browser(pilot, app)
        await pilot.press("z")  # no feature open: a warning, no edit
        assert screen.edits == [] and not screen.query_one("#workbench").display
        await pilot.press("a")
        assert screen.query_one("#workbench").display and "attribution (exact)" in panel_text(app)
        await answer(pilot, "t", str(DRIVEN))
        assert screen.target == DRIVEN
        assert f"attribution (exact): {PLANTED} " in panel_text(app)  # the planted feature drives that class
        assert "heatmap of |attribution|" in str(screen.query_one("#image-title", Static).render())

        await answer(pilot, "slash", str(PLANTED))
        await pilot.press("z")
        assert screen.edits == [Edit((PLANTED,), "zero", 0.0, (0,))]
        expected = edit_json(screen.bench, screen.bench.intervene(screen.image, tuple(screen.edits), DRIVEN))
        before, after = expected["probs_before"], expected["probs_after"]
        shown_classes = sorted(range(len(before)), key=lambda c: -max(before[c], after[c]))[:4]
        text = panel_text(app)
        assert f"zero feature {PLANTED} on patch 0" in text
        for c in shown_classes:  # each line: the class, its probability before → after, as the CLI's JSON says
            line = next(row for row in text.splitlines() if row.startswith(expected["class_names"][c]))
            assert f"{before[c]:.3f} → " in line and line.endswith(f" {after[c]:.3f}"), line
        assert "heatmap of |Δ target logit|" in str(screen.query_one("#image-title", Static).render())

        await pilot.press("A", "plus", "minus")
        assert [edit.patches for edit in screen.edits] == [(0,), None, None]
        assert "×2 feature" in panel_text(app) and "×0.5 feature" in panel_text(app)
        await pilot.press("u", "u", "m")
        (clamp,) = screen.edits[1:]
        assert clamp.mode == "clamp" and clamp.value == pytest.approx(
            float(screen.index.arrays.max_activation[PLANTED])
        )
        await pilot.press("u", "u", "u")  # one more than there are: a warning
        assert screen.edits == [] and "attribution (exact)" in panel_text(app)
        await pilot.press("n")  # another image: edits are per image, the attribution follows
        assert screen.image == 1 and "attribution (exact)" in panel_text(app)
        await pilot.press("a")
        assert not screen.query_one("#workbench").display
        assert app.is_running
