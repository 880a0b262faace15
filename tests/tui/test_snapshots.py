import shutil
from pathlib import Path

from vitsae_tui.tui.app import VitsaeApp

# a fixed path, since the workspace path is shown on screen
SNAPSHOT_WORKSPACE = Path("/tmp/vitsae-tui-snapshot-workspace")


def fresh_app() -> VitsaeApp:
    shutil.rmtree(SNAPSHOT_WORKSPACE, ignore_errors=True)
    return VitsaeApp(SNAPSHOT_WORKSPACE)


def test_home_screen(snap_compare):
    assert snap_compare(fresh_app(), terminal_size=(80, 24))


def test_train_screen(snap_compare):
    assert snap_compare(fresh_app(), press=["t"], terminal_size=(100, 30))
