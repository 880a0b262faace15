"""Exports and labels land where asked or say why not: a missing folder, a folder name, a deleted index."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import answer, make_indexed_workspace, open_browser
from vitsae_tui.tui.app import VitsaeApp


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    return make_indexed_workspace(tmp_path_factory.mktemp("exports") / "ws")


def feature_png(ws, sae, target) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "vitsae_tui", "feature", "--sae", sae, "0", "--png", str(target)]
    return subprocess.run([*command, "--workspace", str(ws.root)], capture_output=True, text=True, timeout=120)


def test_feature_png_into_a_missing_folder_or_onto_a_folder_is_one_sentence(indexed, tmp_path):
    ws, sae = indexed
    for target, said in ((tmp_path / "nowhere" / "card.png", "folder that does not exist"), (tmp_path, "is a folder")):
        result = feature_png(ws, sae, target)
        assert result.returncode == 1 and said in result.stderr and "Traceback" not in result.stderr, result.stderr
    written = feature_png(ws, sae, tmp_path / "card.png")
    assert written.returncode == 0 and (tmp_path / "card.png").stat().st_size > 0


async def test_png_exports_into_a_vanished_folder_and_labels_of_a_deleted_index_are_sentences(indexed, monkeypatch):
    ws, _sae = indexed
    app = VitsaeApp(ws.root)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_browser(pilot, app)
        await answer(pilot, "slash", "0")
        monkeypatch.setattr(Path, "cwd", classmethod(lambda cls: ws.root / "deleted-cwd"))
        await pilot.press("e", "E")
        await pilot.pause(0.2)
        shutil.rmtree(app.screen.index.dir)  # deleted while it is open
        await answer(pilot, "L", *"edges")
        messages = [n.message for n in app._notifications]
        assert sum("no PNG written" in m for m in messages) == 2, messages
        assert any("the label was not saved" in m for m in messages), messages
        assert app.is_running
