"""Every `vitsae-tui` command in the README exists with the options it shows."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("vitsae-tui ")]


def test_the_readme_shows_commands():
    assert len(readme_commands()) >= 10


def test_every_readme_command_and_option_exists():
    helps: dict[str, str] = {}
    for line in readme_commands():
        words = line.split()
        sub = next((w for w in words[1:] if not w.startswith("-")), None)
        key = sub or ""
        if key not in helps:
            args = [sys.executable, "-m", "vitsae_tui", *([sub] if sub else []), "--help"]
            result = subprocess.run(args, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, f"{line}: {result.stderr}"
            helps[key] = result.stdout
        for flag in re.findall(r"(--[a-z][a-z0-9-]*)", line):
            assert flag in helps[key] or flag in helps.setdefault("", _top_help()), f"{line}: {flag} is not an option"


def _top_help() -> str:
    return subprocess.run([sys.executable, "-m", "vitsae_tui", "--help"], capture_output=True, text=True).stdout


def test_the_quickstart_is_two_commands_install_and_test():
    quickstart = (
        re.search(r"## Quickstart\n\n```bash\n(.*?)```", README.read_text(), flags=re.S).group(1).strip().splitlines()
    )
    assert len(quickstart) == 2
    assert quickstart[0].startswith("pip install") and "vitsae-tui" in quickstart[0]
    assert quickstart[1].startswith("pip install") and "pytest" in quickstart[1]
