"""The real `vitsae-tui` command in a real terminal (tmux), driven with send-keys and read with capture-pane."""

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the whole suite runs these; the fast tier leaves them out

WIDTH, HEIGHT = 80, 24  # the smallest terminal the README promises
CRASH = re.compile(r"Traceback|\b[A-Z]\w*Error\b|Exception")


class Tmux:
    def __init__(
        self,
        workspace: Path,
        width: int = WIDTH,
        height: int = HEIGHT,
        demo_size: str = "demo",
        python_args: str = "-m vitsae_tui",
    ):
        assert shutil.which("tmux"), (
            "tmux is required for the end-to-end test (CI installs it: apt-get install -y tmux)"
        )
        self.session = f"vitsae-e2e-{uuid.uuid4().hex[:8]}"
        self.socket = (
            f"vitsae-e2e-{os.getpid()}-{uuid.uuid4().hex[:6]}"  # one server per session: no race with a closing one
        )
        command = f"{sys.executable} {python_args} --workspace {workspace} --demo-size {demo_size}"
        env = {**os.environ, "COLORTERM": "truecolor", "TERM": "xterm-256color"}
        self.run(
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            self.session,
            "-x",
            str(width),
            "-y",
            str(height),
            command,
            env=env,
        )
        self.run("set-option", "-t", self.session, "-g", "default-terminal", "tmux-256color")

    def run(self, *args, env=None) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, env=env, timeout=30)
        return result.stdout

    def keys(self, *keys: str) -> None:
        for key in keys:
            self.run("send-keys", "-t", self.session, key)
            time.sleep(0.05)

    def screen(self, colours: bool = False) -> str:
        return self.run("capture-pane", "-p", *(["-e"] if colours else []), "-t", self.session)

    def wait_for(self, pattern: str, timeout_s: float = 240.0, seen: list | None = None) -> str:
        """Poll the screen until the pattern shows; any capture that shows a crash fails the test at once."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.screen()
            assert not CRASH.search(text), f"the app showed an error:\n{text}"
            if seen is not None:
                seen.append(text)
            if re.search(pattern, text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} never appeared; the screen was:\n{self.screen()}")

    def close(self) -> None:
        self.run("kill-server")


@pytest.fixture
def tmux(tmp_path):
    session = Tmux(tmp_path / "ws")
    yield session
    session.close()


def test_guided_run_at_the_default_size_then_browsing_as_a_person_would(tmux, tmp_path):
    """The README's main path: an empty workspace, g at the default demo size in an 80x24 terminal, the browser."""
    home = tmux.wait_for(r"Press g", timeout_s=30)
    assert "model missing" in home and "g Guided" in home and "q Quit" in home
    started = time.monotonic()
    tmux.keys("g")
    screens: list[str] = []
    tmux.wait_for(r"images drawn", timeout_s=60, seen=screens)  # the first minute shows its own progress
    tmux.wait_for(r"top features of patch|image 0/\d+", timeout_s=900, seen=screens)
    guided_s = time.monotonic() - started
    seen = "\n".join(screens)
    assert re.search(r"loss", seen) and "ETA" in seen, "the Train screen with its plot and ETA was shown during the run"
    assert "images/s" in seen or "collect" in seen
    assert re.search(r"MSE · log scale", seen), "the Train SAE screen with its plot was shown"
    assert re.search(r"[⠁-⣿]", seen), "a plot drew points (braille)"
    browser = tmux.wait_for(r"image 0/\d+ · \S+", timeout_s=10)
    assert "watching" not in browser
    tmux.keys("Right", "Down")
    tmux.wait_for(r"patch 7 \(row 1, col 1\)", timeout_s=10)
    tmux.keys("1")
    tmux.wait_for(r"heatmap of", timeout_s=10)
    features = tmux.wait_for(r"#1/\d+", timeout_s=10)  # the caption of the first top example, drawn below them
    assert re.search(r"feature \d+", features) and re.search(r"density \d", features)
    coloured = tmux.screen(colours=True)
    # the image and heatmap are half-block cells with 24-bit foreground and background colours
    cells = re.findall(r"\x1b\[[0-9;]*38;2;\d+;\d+;\d+[0-9;]*m▄|\x1b\[[0-9;]*48;2;\d+;\d+;\d+[0-9;]*m▄", coloured)
    assert len(cells) > 100, coloured[:2000]
    tmux.keys("escape", "escape")
    tmux.wait_for(r"b browses them", timeout_s=10)
    tmux.keys("q")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "vitsae-e2e" in tmux.run("list-sessions"):
        time.sleep(0.2)
    assert (tmp_path / "ws" / "features").exists()
    print(f"guided run at the default size, g to the browser: {guided_s:.0f} s")
