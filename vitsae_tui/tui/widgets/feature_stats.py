"""What is known of one feature, most telling first (a short terminal shows only the first lines)."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.widgets import Static

from vitsae_tui.formatting import fit_items

SPARK = "▁▂▃▄▅▆▇█"
NO_FEATURE = "no feature open: 1-9 or enter opens one of the patch's features, f lists all"


def sparkline(counts: np.ndarray) -> str:
    peak = counts.max() if len(counts) and counts.max() > 0 else 1
    return "".join(SPARK[min(len(SPARK) - 1, int(c / peak * (len(SPARK) - 1)))] if c else " " for c in counts)


class FeatureStats(Static):
    """Each line fits the widget's width with whole items ('+2' for the ones left out), never a number cut by an
    ellipsis; drawn again when the width changes."""

    shown_feature: tuple | None = None

    def show(self, index, feature: int) -> None:
        self.shown_feature = (index, feature)
        width = max(self.content_size.width, 30) if self.content_size.width else 1000
        summary = index.summary(feature, n_effects=2)
        text = Text.assemble((f"feature {feature}", "bold"), f" — {summary.label}" if summary.label else "")
        bands = index.band_examples(feature)

        def signed(pairs) -> list[str]:
            return [f"{name} {value:+.2f}" for name, value in pairs]

        effects = fit_items("promotes ", signed(summary.promoted), width)
        suppresses = fit_items("suppresses ", signed(summary.suppressed), width)
        if len(effects) + 3 + len(suppresses) <= width:
            effects, suppresses = f"{effects} · {suppresses}", ""
        lines = [
            fit_items("", summary.stats_line().split(" · "), width, " · "),
            # only a concept that clears the bar, with its held-out F1
            *(fit_items("", parts, width, " · ") for parts in summary.concept_parts()),
            fit_items("fires on ", [f"{name} {share:.0%}" for name, share in summary.fires_on[:3]], width)
            if summary.fires_on
            else "",
            effects,
            suppresses,
            fit_items("zeroed on its top images: ", signed(summary.causal), width) if summary.causal else "",
            f"act/θ 1×…256× [{sparkline(summary.activation_hist)}]",
            fit_items("bands ", [f"{i}/{t}" for band in bands if band for i, t, _ in band[:2]], width, " "),
        ]
        for line in lines:
            if line:
                text.append("\n" + line)
        self.update(text)

    def on_resize(self) -> None:
        if self.shown_feature is not None:
            self.show(*self.shown_feature)

    def clear(self) -> None:
        self.shown_feature = None
        self.update(NO_FEATURE)
