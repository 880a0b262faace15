"""What the CLI prints: a progress board that fits, plain lines off a terminal, `runs` at 80 columns, exit codes."""

import io
import json
import math
import subprocess
import sys

from rich.console import Console

from vitsae_tui.cli_print import print_runs
from vitsae_tui.cli_progress import ConsoleReport
from vitsae_tui.engine import events, metrics
from vitsae_tui.engine.workspace import Workspace, write_status

SAE_ROW = metrics.SAEStep(
    run="sae-1",
    step=33,
    tokens=33 * 4096,
    mse=2.945,
    fvu=0.0594,
    l0=10.5,
    dead_fraction=0.0,
    lr=7e-5,
    tokens_per_s=249669.0,
)


def test_the_live_board_keeps_counts_and_eta_whole_at_100_columns():
    report = ConsoleReport(Console(width=100, force_terminal=True, file=io.StringIO()))
    with report:
        report(events.Progress("train-sae", 33, 376, "steps", 5.0, 6.6))
        report(events.Metrics("train-sae", SAE_ROW))
    board = Console(width=100, file=io.StringIO(), record=True)
    for renderable in report.progress.get_renderables():
        board.print(renderable)
    bar_line, metrics_line = board.export_text().splitlines()[:2]
    assert "33/376 steps" in bar_line and "ETA" in bar_line and "…" not in bar_line, bar_line
    assert "MSE 2.945" in metrics_line and "L0 10.5" in metrics_line


def test_off_a_terminal_progress_is_plain_lines_and_no_empty_board():
    out = io.StringIO()
    console = Console(file=out, width=100)
    assert not console.is_terminal
    with ConsoleReport(console) as report:
        for done in (1, 2, 376):
            report(events.Progress("train-model", done, 376, "steps", 1.0, 1.0))
        report(events.Finished("train-model", "models/demo-1", {"best_val_accuracy": 0.97}))
    text = out.getvalue()
    assert text.count("train-model 1/376 steps") == 1 and "train-model 376/376 steps" in text
    assert "train-model 2/376" not in text, "at most one line per stage per interval"
    assert text.rstrip().endswith("best validation accuracy: 97.0%"), text
    assert text.count("376/376 steps") == 1, "the final line once"


def test_runs_shows_every_detail_at_80_columns(workspace: Workspace):
    run = workspace.new_run("saes", "sae")
    write_status(
        run, "finished", fvu=0.0594, l0=10.48, dead_fraction=0.0, tokens=4_817_904, step=1220, total_steps=1220
    )
    out = io.StringIO()
    print_runs(workspace, Console(file=out, width=80))
    text = out.getvalue()
    assert "FVU 0.059 · L0 10.5 · dead 0.0% · 4.8M tokens trained · step 1,220/1,220" in text
    assert "images" not in text and "d ?" not in text


def test_status_files_are_strict_json(workspace: Workspace):
    run = workspace.new_run("models", "demo")
    write_status(run, "running", best_val_loss=math.inf, l0=math.nan)
    status = json.loads(
        (run / "status.json").read_text(), parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name))
    )
    assert status["best_val_loss"] is None and status["l0"] is None


def run_cli(*args, workspace):
    return subprocess.run(
        [sys.executable, "-m", "vitsae_tui", "--workspace", str(workspace), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_user_errors_exit_1_everywhere_and_a_flag_typo_shows_the_subcommands_usage(tmp_path):
    for args in (
        ["inspect", "--sae", "nope", "--image", "0"],
        ["feature", "--sae", "nope", "3"],
        ["index", "--sae", "nope"],
        ["train-sae", "--resume", "nope"],
        ["train-model", "--resume", "nope"],
        ["collect", "--model", "nope"],
        ["train-model", "--epochs", "0"],
    ):
        result = run_cli(*args, workspace=tmp_path)
        assert result.returncode == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.strip(), args
    typo = run_cli("train-sae", "--tokenz", "5", workspace=tmp_path)
    assert typo.returncode == 2 and "vitsae-tui train-sae: error: unrecognized arguments: --tokenz" in typo.stderr
    assert "usage: vitsae-tui train-sae" in typo.stderr


def test_an_empty_workspace_or_a_count_below_one_is_a_usage_error_not_a_silent_default(capsys):
    import pytest

    from vitsae_tui import cli

    for argv, said in (
        (["runs", "--workspace", ""], "--workspace needs a folder"),
        (["--workspace", " ", "runs"], "--workspace needs a folder"),
        (["inspect", "--sae", "x", "--image", "0", "--top", "-1"], "--top: must be at least 1, not -1"),
        (["inspect", "--sae", "x", "--image", "0", "--top", "0"], "--top: must be at least 1, not 0"),
    ):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        assert exited.value.code == 2 and said in capsys.readouterr().err, argv


def test_a_run_stopped_before_its_first_step_never_claims_a_checkpoint():
    out = io.StringIO()
    with ConsoleReport(Console(file=out, width=100)) as report:
        report(events.Finished("train-model", "models/demo-1", {"epochs_done": 0, "step": 0}, stopped=True))
        report(events.Finished("train-model", "models/demo-2", {"epochs_done": 1, "step": 47}, stopped=True))
    first, second = [line for line in out.getvalue().splitlines() if "stopped" in line]
    assert "before its first step (nothing to resume" in first and "checkpoint" not in first
    assert "stopped (checkpoint saved; resume with --resume)" in second
