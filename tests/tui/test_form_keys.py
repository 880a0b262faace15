"""A form is for typing: with a field focused no printable key is a shortcut; the control keys and enter still start,
stop and resume; ? and F1 show the screen's keys; ctrl+c quits like q."""

import pytest
from textual.widgets import Input, Select, Static

from tests.helpers import start_small_training, wait_for
from vitsae_tui.engine import events
from vitsae_tui.tui.app import VitsaeApp
from vitsae_tui.tui.screens.confirm import ConfirmScreen
from vitsae_tui.tui.screens.help import HelpScreen

SHORTCUTS = "sxrvq?tcaibg"  # every printable key a stage screen, home or the app binds


@pytest.mark.parametrize(
    "mode, field", [("train-model", "#preset"), ("train-model", "#dataset"), ("collect", "#model")]
)
async def test_typing_into_a_focused_field_never_fires_a_shortcut(tmp_path, mode, field):
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(80, 24)) as pilot:
        await app.switch_mode(mode)
        await pilot.pause(0.2)
        widget = app.screen.query_one(field)
        widget.focus()
        await pilot.press(*"myimgs", *SHORTCUTS)
        await pilot.pause(0.3)
        assert not app.jobs.jobs and app.current_mode == mode and app.screen.focused is widget
        assert not isinstance(app.screen, (HelpScreen, ConfirmScreen))
        if isinstance(widget, Input):
            assert widget.value.endswith("myimgs" + SHORTCUTS)


async def test_ctrl_keys_start_and_stop_from_inside_the_form_and_stop_is_acknowledged_at_once(tmp_path):
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("t")
        screen = app.screen
        for key, value in (("n_train", "64"), ("epochs", "30"), ("batch_size", "16")):
            screen.query_one(f"#{key}", Input).value = value
        screen.query_one("#device", Select).value = "cpu"
        screen.query_one("#n_train", Input).focus()
        await pilot.press("ctrl+s")
        await wait_for(
            pilot, lambda: (job := app.jobs.get("train-model")) and job.progress and job.progress.unit == "steps", 60
        )
        await screen.run_action("stop")  # the status says so at once, before the job has seen the request
        assert "stopping after the current step" in str(screen.query_one("#status", Static).render())
        await wait_for(pilot, lambda: not app.jobs.running(), timeout_s=60)
        assert app.jobs.get("train-model").state == "stopped"
        screen.query_one("#epochs", Input).focus()
        await pilot.press("ctrl+s")  # and from inside the form: ctrl+s starts a run, ctrl+x stops it
        await wait_for(pilot, lambda: app.jobs.running("train-model"), timeout_s=30)
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: not app.jobs.running(), timeout_s=60)
        assert app.jobs.get("train-model").state == "stopped"
        footer = app.screen.active_bindings
        assert {"ctrl+s", "ctrl+x", "ctrl+r"} <= set(footer) and footer["ctrl+s"].binding.show


async def test_enter_walks_the_form_and_starts_on_its_last_field(tmp_path):
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("t")
        screen = app.screen
        screen.query_one("#device", Select).value = "cpu"
        fields = [w for w in screen.query("#form Input, #form Select") if w.focusable]
        inputs = [w for w in fields if isinstance(w, Input)]
        inputs[0].focus()
        await pilot.press("enter")
        assert screen.focused is fields[fields.index(inputs[0]) + 1] and not app.jobs.jobs
        screen.query_one("#n_train", Input).value = "64"
        screen.query_one("#epochs", Input).value = "30"
        inputs[-1].focus()  # a dropdown's enter opens its list, so the last text field is where enter starts
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.jobs.get("train-model") is not None, timeout_s=10)
        app.jobs.stop_all()
        await wait_for(pilot, lambda: not app.jobs.running(), timeout_s=60)


@pytest.mark.parametrize("key", ["question_mark", "f1"])
async def test_help_lists_the_screens_own_keys_and_closes_with_esc(indexed_root, key):
    app = VitsaeApp(indexed_root)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        for mode, expected in (
            ("home", ("g", "guided")),
            ("browse", ("]", "Next")),
            ("train-sae", ("ctrl+s", "Start")),
        ):
            await app.switch_mode(mode)
            await pilot.pause(0.3)
            if mode == "browse":
                await wait_for(pilot, lambda: app.screen.index is not None, timeout_s=30)
            await pilot.press(key)
            await pilot.pause(0.2)
            assert isinstance(app.screen, HelpScreen), mode
            shown = [what for keys, what in app.screen.keys if expected[0] in keys.split()]
            assert shown and expected[1].lower() in shown[0].lower(), (mode, app.screen.keys)
            await pilot.press("escape")
            await pilot.pause(0.1)
            assert not isinstance(app.screen, HelpScreen) and app.current_mode == mode


@pytest.mark.slow
async def test_ctrl_c_quits_like_q_and_asks_while_a_job_runs(tmp_path):
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(80, 24)) as pilot:
        await start_small_training(pilot, app, epochs=30)
        await pilot.press("ctrl+c")
        await pilot.pause(0.2)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause(0.1)
        assert app.jobs.running()
        app.jobs.stop_all()
        await wait_for(pilot, lambda: not app.jobs.running(), timeout_s=60)
        await pilot.press("ctrl+c")
        await pilot.pause(0.3)
    assert app.return_code == 0 and not app.is_running


async def test_the_index_shows_every_phase_live_on_its_screen_and_home(indexed_root):
    from vitsae_tui.tui.screens.index import IndexScreen

    app = VitsaeApp(indexed_root)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("i")
        await pilot.pause(0.1)
        assert isinstance(app.screen, IndexScreen)
        await wait_for(pilot, lambda: not app.jobs.running(), timeout_s=120)
        job = app.jobs.get("index")
        assert job.state == "finished" and "done" in str(app.screen.query_one("#summary", Static).render())
        # this small index runs through its phases within one refresh: each phase's events, named on the status line
        named = set()
        for event in job.history:
            if isinstance(event, events.Progress):
                job.progress_by_stage["index"] = event
                named.add(app.screen.status_detail(job).split(":")[0])
        assert named == {"pass over the set", "class effects", "causal effects", "concept scoring"}
        await pilot.press("b")
        await wait_for(pilot, lambda: app.current_mode == "browse" and app.screen.index is not None, timeout_s=30)


async def test_home_shows_the_guided_runs_plan_within_a_second_of_g(tmp_path):
    import time

    app = VitsaeApp(tmp_path / "ws", demo_size="tiny")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.scans > 0, timeout_s=10)
        home = app.screen
        await pilot.press("g")
        pressed = time.monotonic()
        await wait_for(pilot, lambda: "step 1 of 5: train model" in str(home.query_one("#next").render()), 5)
        assert time.monotonic() - pressed < 1.0
        assert "left of ~" in str(home.query_one("#next").render())
        app.jobs.stop_all()
        await wait_for(pilot, lambda: not app.jobs.running(), timeout_s=60)
