"""The whole pipeline on the offline default: each stage's state for the newest lineage, and a run of what is missing.

A lineage is one model run, the activation set collected from it, the SAE trained on that set and the SAE's index.
A stage is stale when the artifact it was built from has changed since (a retrained checkpoint, a retrained SAE).
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.config import CollectConfig, SAETrainConfig, TrainModelConfig
from vitsae_tui.engine.events import Finished, Log, Report
from vitsae_tui.engine.workspace import RunInfo, Workspace, file_sha256

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha(path: Path) -> str:
    """file_sha256, remembered per (path, mtime, size): the home screen asks every few seconds."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(path)
    return _SHA_CACHE[key]

STAGES = ("model", "activations", "sae", "index")
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


def lineage(ws: Workspace, model_run: str | None = None) -> list[StageState]:
    """A model (the given one, else the newest finished or running one) and what was built from it, stage by stage."""
    models = [r for r in ws.runs("models") if (r.path / "best.pt").exists() or r.state == "running"]
    if model_run is not None:
        models = [r for r in models if r.name == model_run] or models
    else:
        models = sorted(models, key=lambda r: r.state not in ("finished", "running"))  # stable: newest first within
    if not models:
        return [StageState(s, None, "missing") for s in STAGES]
    model = models[0]
    states = [StageState("model", model.name, _state(model), _model_detail(model))]
    best = model.path / "best.pt"
    sha = _sha(best) if best.exists() and model.state != "running" else None
    sets = [r for r in ws.runs("activations") if _read(r.path / "manifest.json").get("provenance", {}).get("model_run") == model.name]
    if not sets:
        return states + [StageState(s, None, "missing") for s in STAGES[1:]]
    act = sets[0]
    provenance = _read(act.path / "manifest.json").get("provenance", {})
    stale = sha is not None and provenance.get("checkpoint_sha256") != sha and provenance.get("checkpoint") == "best"
    states.append(StageState("activations", act.name, "stale" if stale and act.state == "finished" else _state(act),
                             f"{act.status.get('tokens', 0):,} tokens" if act.state == "finished" else ""))
    saes = [r for r in ws.runs("saes") if r.config.get("activations") == act.name]
    if not saes:
        return states + [StageState(s, None, "missing") for s in STAGES[2:]]
    sae = saes[0]
    sae_detail = f"FVU {sae.status['fvu']:.3f} · L0 {sae.status['l0']:.1f}" if isinstance(sae.status.get("fvu"), float) else ""
    states.append(StageState("sae", sae.name, "stale" if states[-1].state == "stale" else _state(sae), sae_detail))
    indexes = [r for r in ws.runs("features") if _read(r.path / "index.json").get("sae_run") == sae.name]
    if not indexes:
        return states + [StageState("index", None, "missing")]
    index = indexes[0]
    index_sha = _read(index.path / "index.json").get("sae_sha256")
    weights = sae.path / "sae.safetensors"
    index_stale = weights.exists() and sae.state == "finished" and index_sha != _sha(weights)
    detail = ""
    if isinstance(index.status.get("mean_feature_auroc"), float):
        detail = f"concept AUROC {index.status['mean_feature_auroc']:.3f} (neurons {index.status.get('mean_neuron_auroc', 0):.3f})"
    states.append(StageState("index", index.name, "stale" if index_stale else _state(index), detail))
    return states


def next_step(states: list[StageState]) -> str:
    for s in states:
        if s.state != "done":
            verb = {"missing": "build", "stale": "rebuild", "failed": "redo", "stopped": "resume or redo",
                    "interrupted": "resume or redo", "running": "wait for"}.get(s.state, "check")
            return f"{verb} the {s.stage} stage"
    return "browse the features"


def _free_name(ws: Workspace, prefix: str) -> str:
    n = 2
    while (ws.kind_dir("activations") / f"{prefix}{n}").exists():
        n += 1
    return f"{prefix}{n}"


def _model_detail(run: RunInfo) -> str:
    acc = run.status.get("best_val_accuracy")
    return f"val acc {acc:.1%}" if isinstance(acc, float) else ""


def _read(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_pipeline(ws: Workspace, report: Report, stop: threading.Event, size: str = "demo") -> dict[str, str]:
    """Build every missing or stale stage of the newest lineage on the offline default, one after another."""
    from vitsae_tui.engine.activations import collect
    from vitsae_tui.engine.features import build_index
    from vitsae_tui.engine.train_model import train_model
    from vitsae_tui.engine.train_sae import train_sae

    model_cfg, sae_cfg = demo_configs(size)
    states = {s.stage: s for s in lineage(ws)}
    built: dict[str, str] = {}
    if states["model"].state != "done":
        report(Log("pipeline", "stage 1/4: training the demo model"))
        result = train_model(model_cfg, ws, report, stop)
        if result.stopped:
            return built
        built["model"] = result.run_dir.name
    model = built.get("model") or states["model"].run
    if built or states["activations"].state != "done":
        report(Log("pipeline", "stage 2/4: collecting activations"))
        name = ""
        if not built and states["activations"].state == "stale":  # the old set keeps its name and provenance
            name = _free_name(ws, f"{states['activations'].run[:58]}.r")
        result = collect(CollectConfig(model=model, name=name), ws, report, stop)
        if result.stopped:
            return built
        built["activations"] = result.set_dir.name
    activations = built.get("activations") or states["activations"].run
    if built or states["sae"].state != "done":
        report(Log("pipeline", "stage 3/4: training the JumpReLU SAE"))
        result = train_sae(dataclasses.replace(sae_cfg, activations=activations), ws, report, stop)
        if result.stopped:
            return built
        built["sae"] = result.run_dir.name
    sae = built.get("sae") or states["sae"].run
    if built or states["index"].state != "done":
        report(Log("pipeline", "stage 4/4: indexing the features"))
        result = build_index(ws, sae, report, stop)
        if not result.summary:
            return built
        built["index"] = result.index_dir.name
    report(Finished("pipeline", str(ws.root), {"built": ", ".join(f"{k} {v}" for k, v in built.items()) or "nothing: all up to date",
                                               "browse": f"vitsae-tui --workspace {ws.root}  (then b)"}))
    return built
