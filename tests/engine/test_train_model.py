import json
import threading

import pytest
import torch

from tests.helpers import Collector, tiny_train_config
from vitsae_tui.engine import events
from vitsae_tui.engine.errors import StageError
from vitsae_tui.engine.model_run import load_model
from vitsae_tui.engine.stages.train_model import run as train_model
from vitsae_tui.engine.workspace import load_torch_file, read_jsonl


def test_training_lowers_the_loss_and_writes_the_run(workspace):
    report = Collector()
    result = train_model(tiny_train_config(epochs=3), workspace, report, threading.Event())
    rows = read_jsonl(result.run_dir / "metrics.jsonl")
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert len(epochs) == 3
    assert steps[-1]["train_loss"] < steps[0]["train_loss"]
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]
    for name in ("config.json", "dataset.json", "best.pt", "last.pt", "status.json"):
        assert (result.run_dir / name).exists(), name
    assert json.loads((result.run_dir / "status.json").read_text())["state"] == "finished"
    assert report.of(events.Finished) and report.of(events.Progress)
    loaded = load_model(workspace, result.run_dir.name)
    assert loaded.class_names[0] == "warm circle" and len(loaded.checkpoint_sha256) == 64
    best = load_torch_file(result.run_dir / "best.pt")
    assert best["val_loss"] == pytest.approx(min(r["val_loss"] for r in epochs))


def test_stop_then_resume_matches_an_uninterrupted_run(workspace):
    cfg = tiny_train_config(epochs=2)
    straight = train_model(cfg, workspace, Collector(), threading.Event())

    stop = threading.Event()
    stopper = Collector(stop, lambda e: isinstance(e, events.Metrics) and e.row.step >= 5)
    interrupted = train_model(cfg, workspace, stopper, stop)
    assert interrupted.stopped
    saved = load_torch_file(interrupted.run_dir / "last.pt")
    assert (saved["epoch"], saved["step"]) == (0, 5) and saved["optimizer"]["state"]
    assert json.loads((interrupted.run_dir / "status.json").read_text())["state"] == "stopped"

    resumed = train_model(cfg, workspace, Collector(), threading.Event(), resume=interrupted.run_dir.name)
    assert resumed.run_dir == interrupted.run_dir and resumed.epochs_done == 2
    a = load_torch_file(straight.run_dir / "last.pt")
    b = load_torch_file(resumed.run_dir / "last.pt")
    for key in a["model"]:
        assert torch.allclose(a["model"][key].float(), b["model"][key].float(), atol=1e-5), key
    rows_a = [r for r in read_jsonl(straight.run_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    rows_b = [r for r in read_jsonl(resumed.run_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["val_loss"] for r in rows_a] == pytest.approx([r["val_loss"] for r in rows_b], rel=1e-4)


def test_diverging_loss_stops_with_a_message_and_keeps_the_checkpoint(workspace):
    cfg = tiny_train_config(epochs=2, lr=1e6, checkpoint_every=1)
    report = Collector()
    with pytest.raises(StageError, match="start a new run with a --lr below 1e"):
        train_model(cfg, workspace, report, threading.Event())
    failed = report.of(events.Failed)[0]
    # a resumed run keeps its saved --lr: the advice must not offer a resume as the way out
    assert "a --lr below 1e+06" in failed.message and "resume from" not in failed.message
    run_dir = workspace.runs("models")[0].path
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
    load_torch_file(run_dir / "last.pt")


def test_resuming_a_run_without_checkpoint_is_one_sentence(workspace):
    run = workspace.new_run("models", "demo")
    (run / "config.json").write_text(json.dumps({"preset": "demo"}))
    with pytest.raises(StageError, match="no checkpoint"):
        train_model(tiny_train_config(), workspace, Collector(), threading.Event(), resume=run.name)
