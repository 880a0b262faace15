"""The workbench under the browser's image: the target class first (before → after), the edits, the other classes
that move most, and the target's attribution to features."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.widgets import Static

from vitsae_tui.engine.text import shown
from vitsae_tui.engine.workbench import Attribution, EditResult, probabilities

BAR = 10
OTHER_CLASSES_SHOWN = 3
FEATURES_SHOWN = 4


def bar(p: float) -> str:
    filled = int(round(p * BAR))
    return "█" * filled + "░" * (BAR - filled)


class WorkbenchPanel(Static):
    def show_pending(self, what: str) -> None:
        self.update(Text.assemble(("workbench", "bold"), f" · {what}…", style="dim"))

    def show_state(
        self,
        class_names: tuple[str, ...],
        target: int,
        attribution: Attribution | None,
        result: EditResult | None,
        all_patches: bool,
        cursor: int,
        label: str | None,
    ) -> None:
        """`label` is the image's true class name (marked where the model has a class of that name)."""
        name = shown(class_names[target], 40) if target < len(class_names) else str(target)
        scope = "every patch" if all_patches else f"patch {cursor}"
        text = Text.assemble(("workbench", "bold"), f" · target {name} (t: class {target}) · edits on {scope} (A)")
        before = probabilities(result.logits_spliced if result is not None else attribution.logits)
        after = probabilities(result.logits_after) if result is not None else None
        if result is not None:  # the edits before the classes: on a small terminal the panel's last lines are cut
            text.append("\n" + "; ".join(edit.describe() for edit in result.edits) + " (u undoes)")
        wide = self.size.width == 0 or self.size.width >= 60  # bars where a row holds them, numbers always
        others = [c for c in np.argsort(-(before if after is None else np.maximum(before, after)), kind="stable")]
        rows = [target] + [int(c) for c in others if c != target][: OTHER_CLASSES_SHOWN if after is not None else 1]
        for c in rows:
            class_name = class_names[c] if c < len(class_names) else str(c)
            marks = [m for m, on in (("predicted", c == int(before.argmax())), ("label", class_name == label)) if on]
            change = f"{before[c]:.3f}" if after is None else f"{before[c]:.3f} → {after[c]:.3f}"
            if wide:
                bars = bar(before[c]) if after is None else f"{bar(before[c])} → {bar(after[c])}"
                change = f"{bars} {change}"
            prefix = "target " if c == target else ""
            # the name gives way on a narrow pane: the numbers always stay whole on their row
            room = self.size.width - len(change) - 1 - len(prefix) if self.size.width else 14
            head = prefix + shown(class_name, max(4, min(14, room)))
            text.append(f"\n{head:<21} {change}" if len(head) <= 21 < room + len(prefix) else f"\n{head} {change}")
            if marks:
                text.append(f" ({', '.join(marks)})", style="dim")
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
                + (f" · ρ {rho:.3f}" if rho is not None else "")
            )
        self.update(text)
