"""Plain-text formatting of metrics rows and durations, shared by the CLI's progress lines and the app's status."""

from __future__ import annotations

import math

METRIC_FORMATS = {
    "mse": ("MSE", "{:.4g}"),
    "fvu": ("FVU", "{:.4f}"),
    "l0": ("L0", "{:.1f}"),
    "dead_fraction": ("dead", "{:.1%}"),
    "tokens_per_s": ("tok/s", "{:,.0f}"),
    "train_loss": ("loss", "{:.4f}"),
    "train_accuracy": ("acc", "{:.1%}"),
    "val_loss": ("val loss", "{:.4f}"),
    "val_accuracy": ("val acc", "{:.1%}"),
}


def format_metrics(row: dict, formats: dict = METRIC_FORMATS, separator: str = "  ") -> str:
    """The row's known metrics, labelled and rounded; missing or non-finite values are left out."""
    parts = []
    for key, (label, fmt) in formats.items():
        if isinstance(row.get(key), (int, float)) and math.isfinite(row[key]):
            parts.append(f"{label} {fmt.format(row[key])}")
    return separator.join(parts)


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def number(row: dict, key: str, default: float = float("nan")) -> float:
    """A metrics row's number (rows are read from files: anything else is the default)."""
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) else default


def fidelity_line(row: dict) -> str:
    """The classifier with the SAE spliced in, on the evaluation images: what a sweep is judged by."""
    images = "val images" if row.get("eval_split") == "val" else "held-out train images"
    count = row.get("eval_images")
    return (
        f"spliced in ({count if isinstance(count, int) else '?'} {images}): ΔCE {number(row, 'eval_delta_ce'):+.4f} · "
        f"KL {number(row, 'eval_kl'):.4f} · top-1 agree {number(row, 'eval_top1_agreement'):.1%} · "
        f"acc {number(row, 'acc_sae'):.1%} (clean {number(row, 'acc_clean'):.1%}) · worst class "
        f"{number(row, 'acc_worst_class_sae'):.1%} (clean {number(row, 'acc_worst_class_clean'):.1%}) · "
        f"CE recovered {number(row, 'ce_recovered'):.3f} (vs mean ablation, which erases the image)"
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


SUMMARY_LABELS = {
    "best_val_loss": "best validation loss",
    "best_val_accuracy": "best validation accuracy",
    "epochs_done": "epochs done",
    "elapsed_s": "time",
    "bytes_on_disk": "size on disk",
    "d_model": "width",
    "dead_fraction": "dead features",
    "in_window": "pairs in the threshold window",
    "theta_reached": "features in reach of their threshold",
    "fvu": "FVU",
    "mse": "MSE",
    "l0": "L0",
}


def summary_value(key: str, value) -> str:
    """A stage summary's value as a reader wants it: percentages, sizes, durations, thousands separators; a number
    that never got a finite value (no validation pass finished) says so."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "none (no evaluation finished)"
    if key == "elapsed_s":
        return format_duration(value)
    if key == "bytes_on_disk":
        return format_bytes(value)
    if any(word in key for word in ("accuracy", "fraction", "agreement")) or key.startswith("acc_"):
        return f"{value:.1%}"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def summary_lines(summary: dict) -> list[str]:
    """'label: value' per entry of a stage's Finished summary, labels in words instead of keys."""
    return [f"{SUMMARY_LABELS.get(k, k.replace('_', ' '))}: {summary_value(k, v)}" for k, v in summary.items()]


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


def stopped_verb(summary: dict, resume: str) -> str:
    """How a stopped run's end reads: resumable from its checkpoint, or stopped before its first step."""
    if summary.get("step") == 0:
        return "stopped before its first step (nothing to resume: start it again)"
    return f"stopped (checkpoint saved; resume with {resume})"
