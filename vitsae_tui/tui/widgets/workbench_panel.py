"""The workbench under the browser's image: the target class's attribution, the edits, the classes before → after."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.widgets import Static

from vitsae_tui.engine.text import shown
from vitsae_tui.engine.workbench import Attribution, EditResult, probabilities

BAR = 10
CLASSES_SHOWN = 4
FEATURES_SHOWN = 4


def bar(p: float) -> str:
    filled = int(round(p * BAR))
    return "█" * filled + "░" * (BAR - filled)


class WorkbenchPanel(Static):
    def show_state(
        self,
        class_names: tuple[str, ...],
        target: int,
        attribution: Attribution | None,
        result: EditResult | None,
        all_patches: bool,
        cursor: int,
    ) -> None:
        name = shown(class_names[target], 40) if target < len(class_names) else str(target)
        scope = "every patch" if all_patches else f"patch {cursor}"
        text = Text.assemble(("workbench", "bold"), f" · class {target} ({name}) · edits on {scope} (A)")
        if result is not None:  # the edits first: on a small terminal the panel's last lines are cut
            text.append("\n" + "; ".join(edit.describe() for edit in result.edits) + " (u undoes)")
            before, after = probabilities(result.logits_spliced), probabilities(result.logits_after)
            wide = self.size.width == 0 or self.size.width >= 52  # bars where a row holds them, numbers always
            for c in np.argsort(-np.maximum(before, after), kind="stable")[:CLASSES_SHOWN]:
                label = shown(class_names[c], 14) if c < len(class_names) else str(c)
                if wide:
                    text.append(f"\n{label:<14} {bar(before[c])} {before[c]:.3f} → {bar(after[c])} {after[c]:.3f}")
                else:
                    text.append(f"\n{label} {before[c]:.3f} → {after[c]:.3f}")
        if attribution is not None:
            rho = attribution.rank_correlation
            parts = [
                f"{row['feature']} {row['attribution']:+.3f}"
                + (f" ({row['exact_effect']:+.3f})" if row["exact_effect"] is not None else "")
                for row in attribution.features[:FEATURES_SHOWN]
            ]
            listed = " · ".join(parts) or "no feature fires"
            text.append(
                f"\nattribution (exact): {listed} · error {attribution.error_share:+.3f}"
                + (f" · ρ {rho:.2f}" if rho is not None else "")
            )
        self.update(text)
