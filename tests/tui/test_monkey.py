"""A seeded monkey: thousands of random keys across every screen, with a job running, at several sizes; no exception."""

import asyncio
import os
import random
import unicodedata

import pytest
from textual import events
from textual.keys import _character_to_key, _get_unicode_name_from_key

from tests.helpers import start_small_training, wait_for
from vitsae_tui.tui.app import VitsaeApp
from vitsae_tui.tui.screens.confirm import ConfirmScreen

pytestmark = pytest.mark.slow  # the whole suite runs these; the fast tier leaves them out

# the README's Keys table (quitting aside: it is tested on its own), printable keys and the navigation keys
TABLE_KEYS = [
    "ctrl+p",
    "g",
    "t",
    "c",
    "a",
    "i",
    "b",
    "enter",
    "s",
    "x",
    "r",
    "escape",
    "up",
    "down",
    "left",
    "right",
    "h",
    "j",
    "k",
    "l",
    "n",
    "p",
    "1",
    "2",
    "3",
    "9",
    "f",
    "slash",
    "L",
    "e",
    "E",
    "o",
    "d",
    "D",
    "v",
    "pagedown",
    "pageup",
    "tab",
    "shift+tab",
]
PRINTABLE = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPRSTUVWXYZ0123456789 -_.,[]/")
SIZES = [(80, 24), (120, 40), (60, 20), (200, 60)]
KEYS = int(os.environ.get("VITSAE_MONKEY_KEYS", "2000"))


def send_key(app: VitsaeApp, key: str) -> None:
    """Pilot.press without its wait for an idle CPU, which never comes while a job trains (a person does not wait)."""
    if len(key) == 1 and not key.isalnum():
        key = _character_to_key(key)
    try:
        char = unicodedata.lookup(_get_unicode_name_from_key(key))
    except KeyError:
        char = key if len(key) == 1 else None
    event = events.Key(key, char)
    event.set_sender(app)
    app._driver.send_message(event)


async def test_random_keys_on_every_screen_with_a_job_running(indexed_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # e and E write PNGs here
    rng = random.Random(20261128)
    app = VitsaeApp(indexed_root, demo_size="tiny")
    async with app.run_test(size=SIZES[0]) as pilot:
        await start_small_training(pilot, app, epochs=200)
        for n in range(KEYS):
            if n % 500 == 0:
                await pilot.resize_terminal(*SIZES[(n // 500) % len(SIZES)])
            if isinstance(app.screen, ConfirmScreen):  # the palette's Quit: keep the app (quitting has its own tests)
                send_key(app, "n")
            send_key(app, rng.choice(TABLE_KEYS) if rng.random() < 0.7 else rng.choice(PRINTABLE))
            await asyncio.sleep(0.02)  # a fast typist; the app handles every key before the test ends
            assert app.is_running, f"the app stopped after key {n}"
        await pilot.pause(1.0)
        assert app.is_running and app.jobs.get("train-model") is not None
        app.jobs.stop_all()
        await wait_for(pilot, lambda: not app.jobs.running(), timeout_s=120)
