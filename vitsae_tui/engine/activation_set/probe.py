"""A set's linear probe (`probe.safetensors` and `probe.json`): the classifier fit on its images' pooled features
when its model has no classification head of its own."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.activation_set.manifest import SetSummary, StoreError
from vitsae_tui.engine.config import DataConfig
from vitsae_tui.engine.workspace import Workspace, atomic_write_bytes, atomic_write_json, read_json

PROBE_WEIGHTS, PROBE_INFO = "probe.safetensors", "probe.json"
MAX_PROBE_BYTES = 1 << 30


@dataclass(frozen=True)
class ProbeInfo:
    class_names: tuple[str, ...]
    model_sha256: str
    """the checkpoint whose pooled features it reads"""
    train_accuracy: float
    val_accuracy: float
    """on every 10th labelled image, held out of the fit (NaN when the set is too small to hold any out)"""
    n_train: int
    n_val: int

    def validate(self) -> None:
        if not 2 <= len(self.class_names) <= 100_000 or not 0 <= self.n_train <= 1 << 40:
            raise config_mod.ConfigError("a probe needs 2 to 100,000 classes and a sane image count")
        if not all(math.isnan(a) or 0 <= a <= 1 for a in (self.train_accuracy, self.val_accuracy)):
            raise config_mod.ConfigError("a probe's accuracies lie in [0, 1]")


def write_probe(set_dir: Path, weight, bias, info: ProbeInfo) -> None:
    from safetensors.torch import save

    atomic_write_bytes(set_dir / PROBE_WEIGHTS, save({"weight": weight.contiguous(), "bias": bias.contiguous()}))
    atomic_write_json(set_dir / PROBE_INFO, config_mod.to_dict(info))


def read_probe(set_dir: Path):
    """(weight (C, D), bias (C,), ProbeInfo) of the set's probe, or None when it has none; StoreError when damaged."""
    if not (set_dir / PROBE_INFO).exists():
        return None
    where = f"activations/{set_dir.name}/{PROBE_INFO}"
    try:
        info = config_mod.from_dict(ProbeInfo, read_json(set_dir / PROBE_INFO), where)
        if (set_dir / PROBE_WEIGHTS).stat().st_size > MAX_PROBE_BYTES:
            raise ValueError("too large")
        from safetensors.torch import load_file

        tensors = load_file(str(set_dir / PROBE_WEIGHTS))
        weight, bias = tensors["weight"], tensors["bias"]
    except (config_mod.ConfigError, OSError, ValueError, KeyError, RuntimeError) as e:
        raise StoreError(f"{where} or its weights are damaged ({type(e).__name__}); collect the set again") from None
    if weight.dim() != 2 or weight.shape[0] != len(info.class_names) or bias.shape != (weight.shape[0],):
        raise StoreError(f"activations/{set_dir.name}/{PROBE_WEIGHTS} does not match {PROBE_INFO}; collect it again")
    return weight.float(), bias.float(), info


def find_probe(ws: Workspace, model_run: str, model_sha256: str, data: DataConfig):
    """The probe of a set collected from this model checkpoint on the same dataset (pooled features do not depend on
    the hook), or None."""
    for run in ws.runs("activations"):
        try:
            summary = SetSummary.load(run.path)
        except (StoreError, OSError):
            continue
        p = summary.provenance
        if p.model_run == model_run and p.checkpoint_sha256 == model_sha256 and p.data.same_dataset(data):
            probe = read_probe(run.path)
            if probe is not None:
                return probe
    return None
