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


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )
