"""The guided run's choices: a stopped stage is resumed, not redone, and progress is reported from the first second."""

import dataclasses
import threading

from tests.helpers import Collector
from vitsae_tui.engine import events
from vitsae_tui.engine.config import DataConfig
from vitsae_tui.engine.data import load_dataset
from vitsae_tui.engine.pipeline import demo_configs, lineage, next_step, run_pipeline
from vitsae_tui.engine.stages.train_model import run as train_model


def test_a_model_stopped_before_its_first_epoch_is_resumed_by_the_guided_run(workspace, monkeypatch):
    model_cfg, _ = demo_configs("tiny")
    model_cfg = dataclasses.replace(model_cfg, checkpoint_every=2, device="cpu")
    stop = threading.Event()
    report = Collector(stop, lambda e: isinstance(e, events.Progress) and e.unit == "steps" and e.done >= 3)
    assert train_model(model_cfg, workspace, report, stop).stopped
    run = workspace.runs("models")[0]
    assert not (run.path / "best.pt").exists() and (run.path / "last.pt").exists()
    states = lineage(workspace)
    assert (states[0].run, states[0].state) == ("demo-1", "stopped")
    assert next_step(states) == "resume or redo the model stage"
    # the guided run resumes demo-1 (and stops as soon as the next stage starts: that is another test's business)
    stop = threading.Event()
    report = Collector(stop, lambda e: e.stage == "collect")
    built = run_pipeline(workspace, report, stop, size="tiny")
    assert built.get("model") == "demo-1" and [r.name for r in workspace.runs("models")] == ["demo-1"]
    assert any(isinstance(e, events.Log) and "resuming demo-1" in e.message for e in report.events)
    # a stopped guided run says it stopped, so whoever follows it (the app's job, the CLI) knows it has ended
    ends = [e for e in report.events if isinstance(e, events.Finished) and e.stage == "pipeline"]
    assert len(ends) == 1 and ends[0].stopped and ends[0].summary["built"] == "model demo-1"


def test_drawing_the_synthetic_data_reports_its_progress(workspace):
    seen = []
    load_dataset(workspace, DataConfig(n_train=120, n_val=16), "train", lambda done, total: seen.append((done, total)))
    assert seen[0][0] < 120 and seen[-1] == (120, 120) and all(t == 120 for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    seen.clear()
    load_dataset(workspace, DataConfig(n_train=120, n_val=16), "train", lambda done, total: seen.append((done, total)))
    assert seen == [], "a cached split is read, not drawn"


def test_the_guided_run_never_races_a_stage_another_process_is_building(workspace):
    import pytest

    from vitsae_tui.engine.errors import StageError
    from vitsae_tui.engine.workspace import write_status

    write_status(workspace.new_run("models", "demo"), "running", step=3, total_steps=376)  # a live owner: this process
    report = Collector()
    with pytest.raises(StageError, match="being built by another process"):
        run_pipeline(workspace, report, threading.Event(), size="tiny")
    assert [r.name for r in workspace.runs("models")] == ["demo-1"], "no second model was started"
    assert report.of(events.Failed)


def test_the_lineage_reads_a_sets_summary_never_its_manifest_unless_the_summary_is_missing(tmp_path, monkeypatch):
    from tests.helpers import make_indexed_workspace
    from vitsae_tui.engine.activation_set import SUMMARY, Manifest

    ws, sae = make_indexed_workspace(tmp_path / "ws")
    manifest_load = Manifest.load

    def no_manifest(set_dir):
        raise AssertionError("home read a whole manifest")

    monkeypatch.setattr(Manifest, "load", no_manifest)
    states = lineage(ws)
    assert [s.state for s in states] == ["done"] * 4 and states[3].run == sae
    set_dir = ws.run_dir("activations", states[1].run)
    (set_dir / SUMMARY).unlink()  # a set written before summaries: its manifest is read instead (once per change)
    monkeypatch.setattr(Manifest, "load", manifest_load)
    assert [s.state for s in lineage(ws)] == ["done"] * 4


def test_the_guided_run_reports_its_plan_before_anything_else_and_as_each_step_begins(workspace):
    report = Collector()
    run_pipeline(workspace, report, threading.Event(), size="tiny")
    plans = report.of(events.Plan)
    assert report.events[0] == plans[0], "the plan comes first, before any stage reports"
    steps = ("train model", "collect", "collect validation", "train SAE", "index")
    assert all(p.steps == steps for p in plans) and len(plans[0].estimates_s) == 5
    assert [p.current for p in plans] == [0, 0, 1, 2, 3, 4, 5]
    begun = [e.stage for e in report.events if isinstance(e, events.Started)]
    assert begun == ["train-model", "collect", "collect", "train-sae", "index"]
    # all done: nothing to build, and the plan says so
    report = Collector()
    run_pipeline(workspace, report, threading.Event(), size="tiny")
    assert [(p.steps, p.current) for p in report.of(events.Plan)] == [((), 0), ((), 0)]
