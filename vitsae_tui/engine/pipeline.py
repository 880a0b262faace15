"""The whole pipeline on the offline default: each stage's state for the newest lineage, and a run of what is missing.

A lineage is one model run, the activation set collected from it, the SAE trained on that set and the SAE's index.
A stage is stale when the artifact it was built from has changed since (a retrained checkpoint, a retrained SAE).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine import metrics, model_run
from vitsae_tui.engine.config import CollectConfig, IndexConfig, SAETrainConfig, TrainModelConfig
from vitsae_tui.engine.errors import UserError
from vitsae_tui.engine.events import Finished, Log, Plan, Report
from vitsae_tui.engine.models import imported
from vitsae_tui.engine.saes import run as sae_run
from vitsae_tui.engine.stages import REGISTRY, STAGES
from vitsae_tui.engine.stages.run import StageResult, report_failure
from vitsae_tui.engine.text import shown
from vitsae_tui.engine.workspace import RunInfo, Workspace, file_sha256

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha(path: Path) -> str:
    """file_sha256, remembered per (path, mtime, size): the home screen asks every few seconds."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(path)
    return _SHA_CACHE[key]


STAGE_NAMES = tuple(stage.name for stage in STAGES if stage.in_lineage)
DEMO_SAE_TOKENS = 5_000_000


@dataclass(frozen=True)
class StageState:
    stage: str
    run: str | None
    state: str
    """done, running, failed, stopped, interrupted, stale or missing"""
    detail: str = ""


def demo_configs(size: str = "demo") -> tuple[TrainModelConfig, SAETrainConfig]:
    """The default pipeline's model and SAE settings; 'tiny' is a seconds-long version for smoke tests."""
    model = config_mod.preset("demo")
    sae = SAETrainConfig(tokens=DEMO_SAE_TOKENS)
    if size == "tiny":
        model = dataclasses.replace(model, epochs=1, data=dataclasses.replace(model.data, n_train=256, n_val=64))
        sae = dataclasses.replace(sae, tokens=400_000, batch_size=1024, eval_every=200)
    elif size != "demo":
        raise config_mod.ConfigError(f"demo size must be 'demo' or 'tiny', not {size!r}")
    return model, sae


def _state(run: RunInfo) -> str:
    return "done" if run.state == "finished" else run.state


# which run of a stage the lineage follows: finished beats running beats resumable beats failed, whatever their age
_STATE_RANK = {"finished": 0, "running": 1, "stopped": 2, "interrupted": 2}


def _best(candidates: list[RunInfo], *preferences) -> RunInfo | None:
    """The run to follow: by state, then by each preference (a run -> bool, True first), then newest (runs() order)."""
    ranked = sorted(candidates, key=lambda r: (_STATE_RANK.get(r.state, 3), *[not prefer(r) for prefer in preferences]))
    return ranked[0] if ranked else None


def _half_imported(run: RunInfo) -> bool:
    """An import that never finished (killed while writing its weights): nothing to resume, never followed."""
    return run.state not in ("finished", "running") and imported.is_imported(run.path)


def _has_checkpoint(run: RunInfo) -> bool:
    return any(model_run.checkpoint_path(run.path, name).exists() for name in model_run.CHECKPOINTS)


def _provenance(run: RunInfo):
    from vitsae_tui.engine.activation_set import MANIFEST, SUMMARY, SetSummary

    # keyed by both files: a summary older than its manifest is not used (SetSummary.load reads the manifest then)
    summary = _cached((run.path / SUMMARY, run.path / MANIFEST), lambda: SetSummary.load(run.path))
    return summary.provenance if summary is not None else None


def _set_model(run: RunInfo) -> str | None:
    provenance = _provenance(run)
    return provenance.model_run if provenance is not None else None


def _sae_set(run: RunInfo) -> str | None:
    """The activation set an SAE was trained on: its config, else its meta.json."""
    from vitsae_tui.engine.saes.run import SAEMeta

    if isinstance(run.config.get("activations"), str) and run.config["activations"]:
        return run.config["activations"]
    meta = _cached(run.path / sae_run.META, lambda: SAEMeta.load(run.path))
    return meta.activations if meta is not None else None


def _is_validation(run: RunInfo) -> bool:
    provenance = _provenance(run)
    return provenance is not None and provenance.split == "val"


def _on_default_dataset(run: RunInfo) -> bool:
    provenance = _provenance(run)
    return provenance is not None and provenance.data.dataset == "synthetic"


def _index_meta(run: RunInfo):
    from vitsae_tui.engine.feature_index import INDEX_FILE, read_meta

    return _cached(run.path / INDEX_FILE, lambda: read_meta(run.path))


def _index_sae(run: RunInfo) -> str | None:
    meta = _index_meta(run)
    return meta.sae_run if meta is not None else None


def _named(runs: list[RunInfo], name: str | None) -> RunInfo | None:
    return next((r for r in runs if r.name == name), None)


def lineage(
    ws: Workspace, selected: tuple[str, str] | None = None, runs: dict[str, list[RunInfo]] | None = None
) -> list[StageState]:
    """One model and what was built from it, stage by stage: through the selected run (kind, name) when given.

    Upstream of the selected run, its own provenance; downstream (or with no selection), the run to follow is the
    best of its stage: finished before running before resumable before failed, one with a finished child before one
    without, the offline default dataset before others, then the newest. `runs` (kind -> ws.runs(kind)) spares a
    caller that has just listed the workspace a second scan.
    """
    all_runs = (
        runs if runs is not None else {kind: ws.runs(kind) for kind in ("models", "activations", "saes", "features")}
    )
    pinned: dict[str, RunInfo] = {}
    if selected is not None:
        kind, name = selected
        run = _named(all_runs.get(kind, []), name)
        if run is not None:
            pinned[kind] = run
            if kind == "features":
                pinned["saes"] = _named(all_runs["saes"], _index_sae(run))
            if "saes" in pinned and pinned["saes"] is not None:
                pinned["activations"] = _named(all_runs["activations"], _sae_set(pinned["saes"]))
            if pinned.get("activations") is not None:
                pinned["models"] = _named(all_runs["models"], _set_model(pinned["activations"]))
    pinned = {k: v for k, v in pinned.items() if v is not None}

    finished_indexes = {_index_sae(r) for r in all_runs["features"] if r.state == "finished"}
    finished_saes = {_sae_set(r) for r in all_runs["saes"] if r.state == "finished"}
    finished_sets = {_set_model(r) for r in all_runs["activations"] if r.state == "finished"}

    models = [r for r in all_runs["models"] if (_has_checkpoint(r) or r.state == "running") and not _half_imported(r)]
    model = pinned.get("models") or _best(models, lambda r: r.name in finished_sets)
    if model is None:
        return [StageState(s, None, "missing") for s in STAGE_NAMES]
    states = [StageState("train-model", model.name, _state(model), _model_detail(model))]
    best = model_run.checkpoint_path(model.path, "best")
    sha = _sha(best) if best.exists() and model.state != "running" else None

    # a validation split is what SAEs are evaluated on, not trained on
    sets = [r for r in all_runs["activations"] if _set_model(r) == model.name and not _is_validation(r)]
    act = pinned.get("activations") or _best(sets, lambda r: r.name in finished_saes, _on_default_dataset)
    if act is None:
        return states + [StageState(s, None, "missing") for s in STAGE_NAMES[1:]]
    provenance = _provenance(act)
    stale = (
        sha is not None
        and provenance is not None
        and provenance.checkpoint == "best"
        and provenance.checkpoint_sha256 != sha
    )
    tokens = act.status.get(metrics.TOKENS.key)
    states.append(
        StageState(
            "collect",
            act.name,
            "stale" if stale and act.state == "finished" else _state(act),
            f"{tokens:,} tokens" if act.state == "finished" and isinstance(tokens, int) else "",
        )
    )

    saes = [r for r in all_runs["saes"] if _sae_set(r) == act.name]
    sae = pinned.get("saes") or _best(saes, lambda r: r.name in finished_indexes)
    if sae is None:
        return states + [StageState(s, None, "missing") for s in STAGE_NAMES[2:]]
    fvu, l0 = sae.status.get(metrics.FVU.key), sae.status.get(metrics.L0.key)
    sae_detail = f"FVU {fvu:.3f} · L0 {l0:.1f}" if isinstance(fvu, float) and isinstance(l0, (int, float)) else ""
    states.append(
        StageState("train-sae", sae.name, "stale" if states[-1].state == "stale" else _state(sae), sae_detail)
    )

    indexes = [r for r in all_runs["features"] if _index_sae(r) == sae.name]
    index = pinned.get("features") or _best(indexes)
    if index is None:
        return states + [StageState("index", None, "missing")]
    index_meta = _index_meta(index)
    index_sha = index_meta.sae_sha256 if index_meta is not None else None
    weights = sae.path / sae_run.WEIGHTS
    index_stale = weights.exists() and sae.state == "finished" and index_sha != _sha(weights)
    detail = ""
    summary = index_meta.summary if index_meta is not None else None
    if summary is not None and summary.mean_sae_f1 is not None:
        detail = (
            f"concept F1 {summary.mean_sae_f1:.2f} (neurons {summary.mean_neuron_f1 or 0:.2f}, "
            f"object baseline {summary.mean_baseline_f1 or 0:.2f})"
        )
    states.append(StageState("index", index.name, "stale" if index_stale else _state(index), detail))
    return states


def lineage_input(states: list[StageState], stage: str) -> str | None:
    """The finished run of a stage in a lineage, the default input of the stage after it."""
    return next((s.run for s in states if s.stage == stage and s.state == "done"), None)


def next_step(states: list[StageState]) -> str:
    for s in states:
        if s.state != "done":
            verb = {
                "missing": "build",
                "stale": "rebuild",
                "failed": "redo",
                "stopped": "resume or redo",
                "interrupted": "resume or redo",
                "running": "wait for",
            }.get(s.state, "check")
            return f"{verb} the {REGISTRY[s.stage].noun} stage"
    return "browse the features"


def _free_name(ws: Workspace, prefix: str) -> str:
    n = 2
    while (ws.kind_dir("activations") / f"{prefix}{n}").exists():
        n += 1
    return f"{prefix}{n}"


def _model_detail(run: RunInfo) -> str:
    acc = run.status.get(metrics.BEST_VAL_ACCURACY.key)
    spec = run.status.get(metrics.IMPORTED_FROM.key)
    if isinstance(spec, str):
        return f"imported from {shown(spec, 60)}"
    return f"val acc {acc:.1%}" if isinstance(acc, float) else ""


_ARTIFACT_CACHE: dict[str, tuple[tuple[tuple[int, int], ...], Any]] = {}


def _cached(paths: Path | tuple[Path, ...], load: Callable[[], Any]) -> Any:
    """An artifact's typed metadata (None when missing or invalid), loaded again only when one of its files changed."""
    paths = paths if isinstance(paths, tuple) else (paths,)
    try:
        stamp = tuple((st.st_mtime_ns, st.st_size) for st in map(_stat_or_none, paths))
        key = str(paths[0])
        cached = _ARTIFACT_CACHE.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        value = load()
    except (UserError, OSError):
        return None
    _ARTIFACT_CACHE[key] = (stamp, value)
    return value


def _stat_or_none(path: Path):
    try:
        return path.stat()
    except FileNotFoundError:
        return os.stat_result((0,) * 10)


def _validation_collection(ws: Workspace, activations: str, report: Report) -> CollectConfig | None:
    """The collection of the model's validation split of the training set's dataset, at its hook (what the SAE is
    evaluated on); None when it exists or the set is a flat folder's every image."""
    from vitsae_tui.engine.activation_set import SetSummary, find_validation_set

    provenance = SetSummary.load(ws.run_dir("activations", activations)).provenance
    if provenance.split == "val" or find_validation_set(ws.kind_dir("activations"), provenance):
        return None
    if provenance.split == "all":
        report(Log("pipeline", f"{provenance.data.label} has no validation split: the SAE holds out every 20th image"))
        return None
    return _collect_like(provenance, split="val", limit=0)


def _collect_like(p, **changes) -> CollectConfig:
    """The collection a set's provenance describes (same model checkpoint, hook, data, split and dtype), changed."""
    same = {"model": p.model_run, "checkpoint": p.checkpoint, "hook": p.hook, "data": p.data, "split": p.split}
    return dataclasses.replace(CollectConfig(**same, limit=p.limit, dtype=p.dtype), **changes)


def _collect_config(ws: Workspace, model: str, state: StageState, rebuilt_model: bool) -> CollectConfig:
    """The lineage's collection to build: the shown set's own settings (continued, or rebuilt under a free name when
    stale), else the model's default hook on the model's own data."""
    from vitsae_tui.engine.activation_set import SetSummary

    try:
        p = SetSummary.load(ws.run_dir("activations", state.run)).provenance if state.run else None
    except (UserError, OSError):
        p = None
    if p is None or p.split == "val" or p.model_run != model:
        return CollectConfig(model=model)
    name = state.run if not rebuilt_model and state.state != "stale" else _free_name(ws, f"{state.run[:58]}.r")
    return _collect_like(p, model=model, name=name)


def data_label(ws: Workspace, selected: tuple[str, str] | None = None) -> str:
    """What the shown lineage reads ('folder pets/', 'synthetic'): its set's data, else its model's, else the
    offline default the guided run would train on."""
    states = {s.stage: s for s in lineage(ws, selected)}
    from vitsae_tui.engine.activation_set import SetSummary

    try:
        if states["collect"].run:
            return SetSummary.load(ws.run_dir("activations", states["collect"].run)).provenance.data.label
        if states["train-model"].run:
            data = model_run.model_data(ws, states["train-model"].run)
            return data.label if data is not None else "synthetic"
    except (UserError, OSError):
        pass
    return "synthetic"


STEP_ESTIMATES_S = {
    "demo": {"train model": 110, "collect": 15, "collect validation": 5, "train SAE": 45, "index": 40},
    "tiny": {"train model": 6, "collect": 3, "collect validation": 2, "train SAE": 5, "index": 5},
}
"""seconds each guided-run step takes on an idle two-core CPU on the synthetic data (measured with `vitsae-tui demo`)"""


class _Steps:
    """The guided run's plan: reported whole before the first step, then as each step begins."""

    def __init__(self, report: Report, steps: list[str], estimates: dict[str, float] | None):
        self.report, self.steps = report, tuple(steps)
        self.estimates = tuple(float(estimates[s]) for s in steps) if estimates else ()
        report(Plan("pipeline", self.steps, 0, self.estimates))

    def begin(self, step: str, what: str) -> None:
        i = self.steps.index(step)
        self.report(Plan("pipeline", self.steps, i, self.estimates))
        self.report(Log("pipeline", f"step {i + 1} of {len(self.steps)}: {what}"))

    def done(self) -> None:
        self.report(Plan("pipeline", self.steps, len(self.steps), self.estimates))


def _needs_validation(ws: Workspace, activations: str | None, collect_cfg: CollectConfig | None) -> bool:
    """Whether the SAE step must first collect the validation split it is evaluated on."""
    from vitsae_tui.engine.activation_set import SetSummary, find_validation_set

    if collect_cfg is not None or activations is None:
        return collect_cfg is None or collect_cfg.split == "train"
    try:
        provenance = SetSummary.load(ws.run_dir("activations", activations)).provenance
    except (UserError, OSError):
        return True
    return provenance.split == "train" and not find_validation_set(ws.kind_dir("activations"), provenance)


def run_pipeline(
    ws: Workspace, report: Report, stop: threading.Event, size: str = "demo", selected: tuple[str, str] | None = None
) -> dict[str, str]:
    """Build every missing, stale, stopped or failed stage of the lineage shown for `selected`, one after another.

    A stopped or interrupted model or SAE run with a checkpoint is resumed, a collection continues after its last
    complete shard and an index pass continues where it stopped; a failed stage is built again.
    """
    states = {s.stage: s for s in lineage(ws, selected)}
    running = next((s for s in states.values() if s.state == "running"), None)
    if running is not None:  # another process is building it: a second copy would race it
        message = (
            f"the {running.stage} stage is being built by another process ({running.run}); "
            "wait for it to finish (enter on its row follows it live), then press g again"
        )
        raise report_failure("pipeline", message, report)
    # every stage after the first one to build is built too
    first = next((i for i, name in enumerate(STAGE_NAMES) if states[name].state != "done"), len(STAGE_NAMES))
    model = states["train-model"].run
    collect_cfg = _collect_config(ws, model, states["collect"], first == 0) if model and first <= 1 else None
    steps = ["train model", "collect", "collect validation", "train SAE", "index"][first + (first > 2) :]
    if "collect validation" in steps and not _needs_validation(ws, states["collect"].run, collect_cfg):
        steps.remove("collect validation")
    on_synthetic = data_label(ws, selected) == "synthetic"
    plan = _Steps(report, steps, STEP_ESTIMATES_S.get(size) if on_synthetic else None)
    guided = _GuidedRun(ws, report, stop, states, *demo_configs(size), collect_cfg)
    stopped = not guided.build(plan)
    if not stopped:
        plan.done()
    built = guided.built
    index = built.get("index") or states["index"].run
    summary = {"built": ", ".join(f"{k} {v}" for k, v in built.items()) or "nothing: all up to date"}
    if not stopped:
        summary |= {"index": index, "browse": f"{shlex.join(['vitsae-tui', *ws.cli_args])}  (then b)"}
    report(Finished("pipeline", str(ws.root), summary, stopped=stopped))
    return built


@dataclass
class _GuidedRun:
    """The stages a guided run builds, each from what the one before it built (or the lineage already had)."""

    ws: Workspace
    report: Report
    stop: threading.Event
    states: dict[str, StageState]
    model_cfg: TrainModelConfig
    sae_cfg: SAETrainConfig
    collect_cfg: CollectConfig | None
    built: dict[str, str] = dataclasses.field(default_factory=dict)
    """the runs made so far, by kind ('model', 'activations', 'sae', 'index')"""

    def _run(self, stage: str, cfg, **kwargs) -> StageResult | None:
        """The stage's result, or None when it was stopped."""
        result = REGISTRY[stage].run(cfg, self.ws, self.report, self.stop, **kwargs)
        return None if result.stopped else result

    def _resumable(self, stage: str) -> str | None:
        state = self.states[stage]
        return state.run if state.state in ("stopped", "interrupted") else None

    def build(self, plan: _Steps) -> bool:
        """Run the plan's steps in order; False when a step was stopped."""
        ws, steps = self.ws, plan.steps
        model = self.states["train-model"].run
        if "train model" in steps:
            resume = self._resumable("train-model")
            plan.begin("train model", f"resuming {resume}" if resume else "training the demo model")
            if not (result := self._run("train-model", self.model_cfg, resume=resume)):
                return False
            self.built["model"] = model = result.run_dir.name
            self.collect_cfg = _collect_config(ws, model, self.states["collect"], True)
        if "collect" in steps:
            data = self.collect_cfg.data.following(model_run.model_data(ws, model))
            plan.begin("collect", f"collecting activations of {data.label}")
            if not (result := self._run("collect", self.collect_cfg)):
                return False
            self.built["activations"] = result.run_dir.name
        if "train SAE" in steps and not self._train_sae(plan):
            return False
        if "index" in steps:
            plan.begin("index", "indexing the features")
            sae = self.built.get("sae") or self.states["train-sae"].run
            if not (result := self._run("index", IndexConfig(sae=sae))):
                return False
            self.built["index"] = result.run_dir.name
        return True

    def _train_sae(self, plan: _Steps) -> bool:
        """The SAE, after the validation split it is evaluated on; False when either was stopped."""
        activations = self.built.get("activations") or self.states["collect"].run
        resume = self._resumable("train-sae")
        if resume and not sae_run.has_checkpoint(self.ws.run_dir("saes", resume)):
            resume = None
        if "collect validation" in plan.steps:
            plan.begin("collect validation", "collecting the validation split the SAE is evaluated on")
        validation = _validation_collection(self.ws, activations, self.report)
        if validation is not None and not self._run("collect", validation):
            return False
        plan.begin("train SAE", f"resuming {resume}" if resume else "training the JumpReLU SAE")
        cfg = dataclasses.replace(self.sae_cfg, activations=activations)
        if not (result := self._run("train-sae", cfg, resume=resume)):
            return False
        self.built["sae"] = result.run_dir.name
        return True
