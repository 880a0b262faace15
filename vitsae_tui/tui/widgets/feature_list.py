"""Every feature of an index in one sortable table: density, max activation, matched concept, label."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.widgets import DataTable

from vitsae_tui.engine.text import shown

SORTS = [("density", "frequency"), ("max_activation", "max activation"), ("concept", "held-out concept F1")]
MAX_ROWS = 2000


class FeatureList(DataTable):
    def on_mount(self) -> None:
        self.add_columns("feature", "density", "max", "concept", "label")

    def fill(self, index, sort: int, hide_dead: bool) -> str:
        """Show the index's features by SORTS[sort] (strongest first); returns the list's title line."""
        stats = index.arrays
        key, title = SORTS[sort]
        ids = np.arange(index.d_sae)
        if hide_dead:
            ids = ids[stats.density[ids] > 0]
        if key == "concept":
            best = [index.best_concept(int(i)) for i in ids]
            score = np.array([c.sae.f1 if c else 0.0 for c in best])
        else:
            score = getattr(stats, key)[ids]
        ids = ids[np.argsort(-score, kind="stable")]
        self.clear()
        for i in ids[:MAX_ROWS]:
            concept = index.best_concept(int(i))
            self.add_row(
                str(i),
                f"{stats.density[i]:.1e}",
                f"{stats.max_activation[i]:.3g}",
                Text(f"{shown(concept.concept)} F1 {concept.sae.f1:.2f}" if concept else ""),
                Text(index.label(int(i))),
                key=str(i),
            )
        dead = int((stats.density == 0).sum())
        dead_state = "hidden" if hide_dead else "shown"
        return f"{len(ids)} features by {title} (o: sort) · {dead} dead {dead_state} (d) · / jumps to an id"
