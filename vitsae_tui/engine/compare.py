"""Every SAE trained on one activation set, side by side: the held-out metrics of each and the L0-FVU Pareto set."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from vitsae_tui.engine import metrics
from vitsae_tui.engine.errors import UserError
from vitsae_tui.engine.saes import run as sae_run
from vitsae_tui.engine.saes import short_name
from vitsae_tui.engine.workspace import Workspace


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
    """numbers only by metric key, from the run's latest eval row"""
    pareto: bool = False
    """no other SAE of the set has both lower L0 and lower FVU"""
    live: bool = False
    """L0 and FVU are its latest training batches' (it has trained on since its last evaluation, or has none yet)"""

    def value(self, metric: metrics.Metric) -> float:
        return self.metrics.get(metric.key, math.nan)

    @property
    def label(self) -> str:
        """'jump λ0.003 x8': architecture, sparsity and width in a table cell."""
        return f"{short_name(self.arch)} {self.sparsity.replace(' ', '')} x{self.expansion}"


def latest_eval(rows: list[metrics.Row]) -> tuple[dict[str, float], int]:
    """The numbers of the last eval row, the dead fraction of the last training row (silent for the whole dead
    window of training tokens), and the eval row's step."""
    row = metrics.latest(rows, metrics.SAEEval)
    if row is None:
        return {}, 0
    numbers = metrics.values(row)
    train = metrics.latest(rows, metrics.SAEStep)
    if train is not None and math.isfinite(train.dead_fraction):
        numbers[metrics.DEAD_FRACTION.key] = train.dead_fraction
    return numbers, row.step


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
        rows = metrics.read_rows(info.path / metrics.METRICS_FILE, "train-sae")
        numbers, step = latest_eval(rows)
        training = metrics.latest(rows, metrics.SAEStep)
        newer = live and info.state == "running" and training is not None and training.step > step
        if newer and math.isfinite(training.l0) and math.isfinite(training.fvu):
            numbers = {**numbers, metrics.EVAL_L0.key: training.l0, metrics.EVAL_FVU.key: training.fvu}
            step = training.step
        if metrics.EVAL_L0.key not in numbers or metrics.EVAL_FVU.key not in numbers:
            continue
        point = SAEPoint(info.name, cfg.arch, cfg.sparsity, cfg.expansion, info.state, step, cfg.total_steps, numbers)
        found.append(dataclasses.replace(point, live=newer))
    return mark_pareto(found)


def mark_pareto(
    found: list[SAEPoint], x: metrics.Metric = metrics.EVAL_L0, y: metrics.Metric = metrics.EVAL_FVU
) -> list[SAEPoint]:
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
