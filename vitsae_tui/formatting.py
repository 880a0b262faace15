"""Plain-text formatting of metrics rows and durations, shared by the CLI's progress lines and the app's status."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from vitsae_tui.engine import metrics
from vitsae_tui.engine.text import format_bytes


def format_metrics(numbers: Mapping[str, float], shown=metrics.PROGRESS_LINE, separator: str = "  ") -> str:
    """The known metrics among `numbers` (by key), labelled and rounded; missing or non-finite ones are left out."""
    parts = []
    for metric in shown:
        value = numbers.get(metric.key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            parts.append(f"{metric.label} {format_value(metric, value)}")
    return separator.join(parts)


def format_value(metric: metrics.Metric, value: float) -> str:
    """A number as its metric is shown: a percentage, a count, a duration, a size or its own digits."""
    if not math.isfinite(value):
        return "–"
    if metric.style == "percent":
        return f"{value:.1%}"
    if metric.style == "duration":
        return format_duration(value)
    if metric.style == "bytes":
        return format_bytes(value)
    if metric.style == "count":
        return f"{int(value):,}"
    return format(value, metric.digits)


def table_title(metric: metrics.Metric) -> str:
    """A column's or plot's title: its label, with % when its numbers are percentages without the sign."""
    return metric.label + ("%" if metric.style == "percent" else "")


def table_cell(metric: metrics.Metric, value: float) -> str:
    """A number in a table whose column title carries the unit (a percentage without its sign)."""
    if not math.isfinite(value):
        return "–"
    return f"{100 * value:.1f}" if metric.style == "percent" else format(value, metric.digits)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def fidelity_line(row: metrics.SAEEval) -> str:
    """The classifier with the SAE spliced in, on the evaluation images: what a sweep is judged by."""
    images = "val images" if row.eval_split == "val" else "held-out train images"
    count = row.eval_images if row.eval_images is not None else "?"

    def shown(value: float | None, spec: str) -> str:
        return format(value, spec) if value is not None and math.isfinite(value) else "–"

    return (
        f"spliced in ({count} {images}): ΔCE {shown(row.eval_delta_ce, '+.4f')} · "
        f"KL {shown(row.eval_kl, '.4f')} · top-1 agree {shown(row.eval_top1_agreement, '.1%')} · "
        f"acc {shown(row.acc_sae, '.1%')} (clean {shown(row.acc_clean, '.1%')}) · worst class "
        f"{shown(row.acc_worst_class_sae, '.1%')} (clean {shown(row.acc_worst_class_clean, '.1%')}) · "
        f"CE recovered {shown(row.ce_recovered, '.3f')} (vs mean ablation, which erases the image)"
    )


STEP_STAGES = {
    "train model": "train-model",
    "collect": "collect",
    "collect validation": "collect",
    "train SAE": "train-sae",
    "index": "index",
}
"""the engine stage each guided-run step runs (its progress events carry that stage's name)"""


def rough_minutes(seconds: float) -> str:
    return f"{max(1, round(seconds / 60))} min" if seconds >= 90 else f"{max(1, round(seconds))} s"


def plan_line(
    steps: tuple[str, ...],
    current: int,
    estimates_s: tuple[float, ...],
    step_eta_s: float | None,
    step_elapsed_s: float,
    run_elapsed_s: float,
) -> str:
    """'step 3 of 5: train SAE · about 4 min left of ~9': where a guided run is and, when its steps have estimates,
    how long is left (the running step's own ETA once it reports one)."""
    if current >= len(steps):
        return f"all {len(steps)} steps done" if steps else "nothing to build"
    line = f"step {current + 1} of {len(steps)}: {steps[current]}"
    if not estimates_s:
        return line + (f" · this step {rough_minutes(step_eta_s)} left" if step_eta_s is not None else "")
    this_step = step_eta_s if step_eta_s is not None else max(estimates_s[current] - step_elapsed_s, 0.0)
    left = this_step + sum(estimates_s[current + 1 :])
    return f"{line} · about {rough_minutes(left)} left of ~{rough_minutes(run_elapsed_s + left)}"


def summary_value(key: str, value) -> str:
    """A stage summary's value as a reader wants it: percentages, sizes, durations, thousands separators; a number
    that never got a finite value (no validation pass finished) says so."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "none (no evaluation finished)"
    metric = metrics.metric(key)
    if metric.style in ("percent", "duration", "bytes"):
        return format_value(metric, value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """'label: value' per entry of a stage's Finished summary, labels in words instead of keys."""
    return [f"{metrics.metric(k).words}: {summary_value(k, v)}" for k, v in summary.items()]


def fit_items(prefix: str, items: list[str], width: int, separator: str = ", ") -> str:
    """`prefix` and as many whole items as fit in `width` columns, then '+N' for the rest: a number is never cut
    mid-way by an ellipsis (the first item is kept even when it alone is too wide; the line then wraps)."""
    line = prefix
    for i, item in enumerate(items):
        rest = f" +{len(items) - i - 1}" if i < len(items) - 1 else ""
        candidate = line + (separator if i else "") + item
        if i and len(candidate) + len(rest) > width:
            return f"{line} +{len(items) - i}"
        line = candidate
    return line


def stopped_verb(summary: Mapping[str, Any], resume: str) -> str:
    """How a stopped run's end reads: resumable from its checkpoint, or stopped before its first step."""
    if summary.get(metrics.STEP.key) == 0:
        return "stopped before its first step (nothing to resume: start it again)"
    return f"stopped (checkpoint saved; resume with {resume})"
