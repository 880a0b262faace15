"""Every SAE trained on one activation set, side by side: the held-out metrics of each and the L0-FVU Pareto set."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from vitsae_tui.engine.errors import UserError
from vitsae_tui.engine.saes import run as sae_run
from vitsae_tui.engine.saes import short_name
from vitsae_tui.engine.workspace import Workspace, read_jsonl

COLUMNS = (
    ("eval_l0", "L0"),
    ("eval_fvu", "FVU"),
    ("eval_explained_variance", "EV"),
    ("eval_l2_ratio", "L2"),
    ("dead_fraction", "dead%"),
    ("eval_dense_fraction", "dense%"),
    ("eval_decoder_max_cosine", "cos"),
    ("eval_delta_ce", "ΔCE"),
    ("eval_kl", "KL"),
    ("kl_recovered", "KLrec"),
    ("eval_top1_agreement", "agree%"),
    ("acc_sae", "acc%"),
    ("acc_worst_class_sae", "worst%"),
    ("ce_recovered", "CErec"),
)
"""the metrics compared, from each run's latest held-out evaluation, and their column titles (EV: explained variance,
L2: mean ||x_hat|| / ||x||, cos: mean max decoder cosine similarity): the SAE's own, then the classifier's with the SAE
spliced in"""
SPLICED_FROM = 7


@dataclass(frozen=True)
class SAEPoint:
    run: str
    arch: str
    sparsity: str
    """'λ 0.003' or 'k 16'"""
    expansion: int
    state: str
    step: int
    total_steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    """numbers only, from the run's latest eval row"""
    pareto: bool = False
    """no other SAE of the set has both lower L0 and lower FVU"""
    live: bool = False
    """L0 and FVU are its latest training batches' (it has trained on since its last evaluation, or has none yet)"""

    def value(self, key: str) -> float:
        return self.metrics.get(key, math.nan)

    @property
    def label(self) -> str:
        """'jump λ0.003 x8': architecture, sparsity and width in a table cell."""
        return f"{short_name(self.arch)} {self.sparsity.replace(' ', '')} x{self.expansion}"


def _numbers(row: dict) -> dict[str, float]:
    """A metrics row's finite numbers (a metrics file is untrusted: anything else is dropped)."""
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def latest_eval(rows: list[dict]) -> tuple[dict[str, float], int]:
    """The numbers of the last eval row, the dead fraction of the last training row (silent for the whole dead
    window of training tokens), and the eval row's step."""
    row = next((r for r in reversed(rows) if r.get("kind") == "eval"), {})
    train = next((r for r in reversed(rows) if r.get("kind") == "step"), {})
    numbers = _numbers(row)
    numbers.update({k: v for k, v in _numbers(train).items() if k == "dead_fraction"})
    step = row.get("step")
    return numbers, step if isinstance(step, int) else 0


def points(ws: Workspace, activations: str, live: bool = False) -> list[SAEPoint]:
    """Every SAE run trained on `activations` that has been evaluated, its Pareto membership marked; with `live`,
    runs still training show their latest training-batch L0 and FVU (marked) until their next evaluation."""
    ws.run_dir("activations", activations)  # a set name that is not one is an error, not an empty table
    found = []
    for info in ws.runs("saes"):
        try:
            cfg = sae_run.read_config(ws, info.name)
        except UserError:
            continue  # damaged: `vitsae-tui runs` shows it as such
        if cfg.activations != activations:
            continue
        rows = read_jsonl(info.path / "metrics.jsonl")
        metrics, step = latest_eval(rows)
        training = _numbers(next((r for r in reversed(rows) if r.get("kind") == "step"), {}))
        newer = live and info.state == "running" and training.get("step", -1) > step
        if newer and "l0" in training and "fvu" in training:
            metrics = {**metrics, "eval_l0": training["l0"], "eval_fvu": training["fvu"]}
            step = int(training["step"])
        if "eval_l0" not in metrics or "eval_fvu" not in metrics:
            continue
        point = SAEPoint(info.name, cfg.arch, cfg.sparsity, cfg.expansion, info.state, step, cfg.total_steps, metrics)
        found.append(dataclasses.replace(point, live=newer))
    return mark_pareto(found)


def mark_pareto(found: list[SAEPoint], x: str = "eval_l0", y: str = "eval_fvu") -> list[SAEPoint]:
    """Each evaluated point with `pareto` set when no other evaluated point is at most as large on both axes and
    smaller on one (a live point's training-batch numbers are not held-out: they never set the frontier)."""
    measured = [q for q in found if not q.live]

    def dominated(p: SAEPoint) -> bool:
        return any(
            q.value(x) <= p.value(x)
            and q.value(y) <= p.value(y)
            and (q.value(x) < p.value(x) or q.value(y) < p.value(y))
            for q in measured
        )

    marked = [dataclasses.replace(p, pareto=not p.live and not dominated(p)) for p in found]
    return sorted(marked, key=lambda p: (p.arch, p.value(x)))
