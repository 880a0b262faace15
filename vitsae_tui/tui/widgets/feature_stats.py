"""What is known of one feature, most telling first (a short terminal shows only the first lines)."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.widgets import Static

SPARK = "▁▂▃▄▅▆▇█"
NO_FEATURE = "no feature open: 1-9 or enter opens one of the patch's features, f lists all"


def sparkline(counts: np.ndarray) -> str:
    peak = counts.max() if len(counts) and counts.max() > 0 else 1
    return "".join(SPARK[min(len(SPARK) - 1, int(c / peak * (len(SPARK) - 1)))] if c else " " for c in counts)


class FeatureStats(Static):
    def show(self, index, feature: int) -> None:
        summary = index.summary(feature, n_effects=2)
        text = Text.assemble((f"feature {feature}", "bold"), f" — {summary.label}" if summary.label else "")
        bands = index.band_examples(feature)
        lines = [
            summary.stats_line(),
            *summary.concept_lines(),  # only a concept that clears the bar, with its held-out F1
            summary.fires_on_line(),
            summary.effect_line(),
            summary.causal_line(),
            f"act/θ 1×…256× [{sparkline(summary.activation_hist)}]",
            "bands " + " | ".join(", ".join(f"{i}/{t}" for i, t, _ in band[:2]) for band in bands if band),
        ]
        for line in lines:
            if line:
                text.append("\n" + line)
        self.update(text)

    def clear(self) -> None:
        self.update(NO_FEATURE)
