"""Each screen's palette commands run its own actions; stage forms come from the config classes' field docs."""

import numpy as np
from textual.widgets import Input, Select, Static

from tests.helpers import wait_for, write_activation_set
from vitsae_tui.engine.config import SAETrainConfig, field_help
from vitsae_tui.tui.app import STAGE_SCREENS, VitsaeApp
from vitsae_tui.tui.screens.browser import BrowserScreen
from vitsae_tui.tui.widgets.config_form import ConfigForm


def test_every_palette_entry_names_an_action_of_its_screen():
    for screen in (*STAGE_SCREENS, BrowserScreen):
        entries = screen.palette(screen())
        assert entries, screen
        for title, help_text, action in entries:
            assert title and help_text and callable(getattr(screen, f"action_{action}", None)), (screen, action)


async def test_the_palette_runs_the_shown_screens_command(tmp_path):
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("a")  # the SAE screen: its commands are in the palette only while it is shown
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"Train SAE: stop")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await wait_for(pilot, lambda: any("no train-sae job is running" in n.message for n in app._notifications), 5)
        assert app.current_mode == "train-sae"


async def test_the_sae_form_is_built_from_the_config_and_explains_the_focused_field(tmp_path):
    app = VitsaeApp(tmp_path / "ws")
    write_activation_set(app.workspace, "tiny", np.zeros((4, 36, 8), np.float32))
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("a")
        form = app.screen.query_one("#config", ConfigForm)
        labels = [str(label.render()) for label in form.query("Label")]
        sweeps = " (a,b: sweep)"
        assert labels == [
            "activations",
            f"arch{sweeps}",
            f"l0-coeff{sweeps}",
            f"k{sweeps}",
            f"expansion{sweeps}",
            "bandwidth",
            "lr",
            "batch-size",
            "tokens",
            "device",
        ]
        assert form.query_one("#l0_coeff", Input).value == str(SAETrainConfig().l0_coeff)
        form.query_one("#bandwidth", Input).focus()
        await pilot.pause(0.1)
        assert field_help(SAETrainConfig)["bandwidth"] in str(form.query_one("#field-help", Static).render())
        assert str(form.query_one("#activations", Select).value) == "tiny"
        form.query_one("#tokens", Input).value = "lots"
        app.screen.set_focus(None)  # s in an input types an s
        await pilot.press("s")
        await pilot.pause(0.2)
        assert app.jobs.get("train-sae") is None
        messages = [n.message for n in app._notifications]
        assert any("tokens must be a whole number, not 'lots'" in m for m in messages), messages
        form.query_one("#tokens", Input).value = "100000"
        form.query_one("#k", Input).value = "8,8"
        await pilot.press("s")
        await pilot.pause(0.2)
        assert app.jobs.get("train-sae") is None
        assert any("k repeats a value" in n.message for n in app._notifications)


async def test_the_palette_describes_each_stage_in_its_own_words(tmp_path):
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(100, 32)):
        helps = {command.title: command.help for command in app.get_system_commands(app.screen)}
    assert helps["Train SAE"] == "Train a JumpReLU sparse autoencoder on an activation set"
