import json
import os
import subprocess
import sys
import time

import pytest


def run_cli(*args, workspace=None, timeout=300):
    env = {**os.environ, "VITSAE_WORKSPACE": str(workspace)} if workspace else None
    return subprocess.run(
        [sys.executable, "-m", "vitsae_tui", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_help_is_fast_and_does_not_import_torch():
    code = (
        "import sys; from vitsae_tui.cli import build_parser; build_parser().format_help(); "
        "print('torch' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
    start = time.perf_counter()
    result = run_cli("--help")
    assert result.returncode == 0 and "train-model" in result.stdout
    assert time.perf_counter() - start < 2.0  # the process start included; the import alone is ~0.1 s


def test_train_model_help_comes_from_the_config_docstrings():
    result = run_cli("train-model", "--help")
    assert "AdamW learning rate" in result.stdout and "--resume RUN" in result.stdout


def test_headless_training_and_runs_listing(tmp_path):
    result = run_cli(
        "train-model",
        "--epochs",
        "1",
        "--n-train",
        "32",
        "--n-val",
        "16",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        workspace=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "train-model finished" in result.stderr and "demo-1" in result.stderr
    # redirected: plain lines, the final count once, the summary in words (not 'best_val_loss: 2.3')
    final = [line for line in result.stderr.splitlines() if " 2/2 steps" in line]
    assert len(final) == 1, result.stderr
    assert "best validation accuracy: " in result.stderr and "best_val" not in result.stderr
    status = json.loads((tmp_path / "models" / "demo-1" / "status.json").read_text())
    assert status["state"] == "finished"
    listing = run_cli("runs", workspace=tmp_path)
    assert "demo-1" in listing.stdout and "finished" in listing.stdout
    resumed = run_cli("train-model", "--resume", "demo-1", "--epochs", "3", "--lr", "0.1", workspace=tmp_path)
    assert "--epochs, --lr ignored: a resumed run continues with the settings it was started with" in resumed.stderr


def test_read_only_commands_never_create_a_workspace(tmp_path):
    for command in (["runs"], ["compare", "--activations", "x"], ["feature", "--sae", "sae-1", "3"]):
        result = run_cli(*command, "--workspace", str(tmp_path / "missing"))
        assert result.returncode == 1 and f"no workspace at {tmp_path / 'missing'}" in result.stderr, command
        assert not (tmp_path / "missing").exists() and "Traceback" not in result.stderr


def test_bad_input_is_one_line_without_traceback(tmp_path):
    bad_epochs = run_cli("train-model", "--epochs", "0", workspace=tmp_path)
    assert bad_epochs.returncode == 1 and "epochs must be at least 1" in bad_epochs.stderr
    assert "Traceback" not in bad_epochs.stderr
    missing = run_cli("train-model", "--resume", "nope-1", workspace=tmp_path)
    assert missing.returncode != 0 and "no run 'nope-1'" in missing.stderr and "Traceback" not in missing.stderr
    no_folder = run_cli("train-model", "--dataset", str(tmp_path / "nothing"), workspace=tmp_path)
    assert no_folder.returncode == 1 and "is not a folder" in no_folder.stderr and "Traceback" not in no_folder.stderr


@pytest.mark.slow
def test_headless_pipeline_collect_and_train_sae(tmp_path):
    assert (
        run_cli(
            "train-model",
            "--epochs",
            "1",
            "--n-train",
            "32",
            "--n-val",
            "16",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            workspace=tmp_path,
        ).returncode
        == 0
    )
    collect = run_cli("collect", "--model", "demo-1", "--limit", "20", "--device", "cpu", workspace=tmp_path)
    assert collect.returncode == 0, collect.stderr
    name = "demo-1.blocks.1.resid_post.synthetic.train.n20"
    assert "collect finished" in collect.stderr and name in collect.stderr
    again = run_cli("collect", "--model", "demo-1", "--limit", "20", "--device", "cpu", workspace=tmp_path)
    assert again.returncode == 0 and "already complete" in again.stderr
    sae = run_cli(
        "train-sae",
        "--activations",
        name,
        "--tokens",
        "40000",
        "--batch-size",
        "512",
        "--eval-every",
        "50",
        "--device",
        "cpu",
        workspace=tmp_path,
    )
    assert sae.returncode == 0, sae.stderr
    assert "train-sae finished" in sae.stderr and "CE recovered" in sae.stderr
    listing = run_cli("runs", workspace=tmp_path)
    assert name in listing.stdout and "sae-1" in listing.stdout
    missing = run_cli("train-sae", workspace=tmp_path)
    assert missing.returncode == 2 and "--activations SET" in missing.stderr
