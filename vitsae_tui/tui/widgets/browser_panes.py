"""The feature browser's panes: each draws one part of the browser from the state it is given (the screen owns the
state and says when it changed), so a change redraws only what depends on it; the workbench computes in a thread."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from PIL import Image
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Select, Static

from vitsae_tui.engine.cards import draw_grid, one_per_image, overlay
from vitsae_tui.engine.errors import UserError
from vitsae_tui.engine.text import MAX_MESSAGE, shown
from vitsae_tui.tui.widgets.examples_view import ExamplesView
from vitsae_tui.tui.widgets.feature_list import FeatureList
from vitsae_tui.tui.widgets.feature_stats import NO_FEATURE, FeatureStats
from vitsae_tui.tui.widgets.patch_image import PatchImage
from vitsae_tui.tui.widgets.workbench_panel import WorkbenchPanel

MAX_RENDERS = 64


@dataclass(frozen=True)
class ImageView:
    """What the image pane shows: an image, its selected patch, and the heatmap over it."""

    image: int
    cursor: int
    feature: int | None
    class_filter: int | None
    bench_heat: np.ndarray | None = None
    """|attribution| or |change of the target logit| per patch while the workbench is on"""
    edited: bool = False


class ImagePane(Vertical):
    """The image as terminal pixels with its token grid and patch cursor, under the index picker, over the workbench."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.renders: OrderedDict = OrderedDict()

    def compose(self) -> ComposeResult:
        yield Select([], prompt="(build an index first)", id="index", compact=True)
        yield Static("", id="image-title")
        yield PatchImage(id="image")
        yield WorkbenchPane(id="workbench-scroll")

    def forget(self) -> None:
        """Drop the drawn images (another index)."""
        self.renders.clear()

    def pixel_size(self, grid: int, max_px: int = 224) -> int:
        """Largest square (in pixels) that fits the image widget: one column per pixel, two pixels per row."""
        width, height = self.query_one("#image", PatchImage).pixel_box()
        side = max(grid * 2, min(width, height, max_px))
        return side - side % grid

    def composed_image(self, index, view: ImageView, size: int, no_color: bool) -> Image.Image:
        heat = view.bench_heat
        key = (index, view.image, view.feature, view.cursor, size, None if heat is None else heat.tobytes())
        if key not in self.renders:
            thumb = index.thumbnail(view.image)
            if heat is not None:
                picture = overlay(thumb, heat, size, float(heat.max()) or None, no_color)
            elif view.feature is None:
                picture = Image.fromarray(thumb).resize((size, size), Image.LANCZOS)
            else:
                scale = index.heat_scale(view.feature)
                picture = overlay(thumb, index.heatmap(view.image, view.feature), size, scale, no_color)
            self.renders[key] = draw_grid(picture, index.grid, view.cursor)
            if len(self.renders) > MAX_RENDERS:
                self.renders.popitem(last=False)
        return self.renders[key]

    def show(self, index, view: ImageView, no_color: bool) -> None:
        row, col = divmod(view.cursor, index.grid)
        only = f" · only {index.label_name(view.class_filter)}" if view.class_filter is not None else ""
        heat = f" · heatmap of feature {view.feature}" if view.feature is not None else ""
        if view.bench_heat is not None:
            heat = " · heatmap of |Δ target logit|" if view.edited else " · heatmap of |attribution|"
        # two short lines: on a narrow pane one long one wrapped into five and left the image a strip
        self.query_one("#image-title", Static).update(
            Text(
                f"image {view.image}/{index.n_images - 1} · {index.image_info(view.image).class_name}{only}\n"
                f"patch {view.cursor} (row {row}, col {col}){heat}"
            )
        )
        picture = self.composed_image(index, view, self.pixel_size(index.grid), no_color)
        self.query_one("#image", PatchImage).show(picture)


class WorkbenchPane(VerticalScroll):
    """Under the image: the prediction attributed to features and patches, and the effect of the feature edits, for
    a key (index, image, target, attribution on, edits). A thread computes them (a key press never waits for the
    model, which loads on first use) and posts Done."""

    class Done(Message):
        def __init__(self, key: tuple, bench=None, attribution=None, result=None, message: str = ""):
            super().__init__()
            self.key, self.bench, self.attribution, self.result, self.message = key, bench, attribution, result, message

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bench = None
        """the workbench (model and SAE spliced), made on first use"""
        self.results: tuple = (None, None, None)
        """(the key they were computed for, attribution, edit result): kept while the cursor moves"""
        self.lock = threading.Lock()
        """one computation at a time (an exclusive worker's thread runs on after it is cancelled)"""

    def compose(self) -> ComposeResult:
        yield WorkbenchPanel("", id="workbench")

    def show(self, workspace, key: tuple, cursor: int, all_patches: bool) -> np.ndarray | None:
        """Show the workbench for `key`, at once when computed, else 'computing…' while a thread works it out;
        returns what the image shows meanwhile: |attribution| or |change of the target logit| per patch, or None."""
        index, image, _target, attribution_on, edits = key
        panel = self.query_one(WorkbenchPanel)
        active = index is not None and (attribution_on or bool(edits))
        panel.display = self.display = active
        if not active:
            return None
        if self.results[0] != key:  # a patch move changes neither: only the panel's scope line is redrawn
            panel.show_pending("applying the edits" if edits else "attributing")
            self.compute(workspace, key)
            return None
        _, attribution, result = self.results
        target = (attribution or result).target
        label = index.image_info(image).class_name
        panel.show_state(self.bench.class_names, target, attribution, result, all_patches, cursor, label)
        return np.abs(result.patch_change if result is not None else attribution.patch_grid)

    @work(thread=True, exclusive=True, group="workbench")
    def compute(self, workspace, key: tuple) -> None:
        from vitsae_tui.engine.workbench import Workbench

        index, image, target, attribution_on, edits = key
        try:
            with self.lock:
                bench = self.bench if self.bench is not None and self.bench.index is index else None
                bench = bench or Workbench(workspace, index)
                attribution = bench.attribute(image, target) if attribution_on else None
                result = bench.intervene(image, edits, target) if edits else None
        except UserError as e:  # a damaged index or a missing model: a sentence, the browser goes on
            self.post_message(self.Done(key, message=shown(e, MAX_MESSAGE)))
            return
        self.post_message(self.Done(key, bench, attribution, result))

    def on_workbench_pane_done(self, event: Done) -> None:
        if not event.message:  # kept, then the screen redraws what depends on it
            self.bench, self.results = event.bench, (event.key, event.attribution, event.result)


class PatchFeatures(Vertical):
    """The selected patch's strongest features: the one open in bold."""

    def compose(self) -> ComposeResult:
        yield Static("", id="patch-title")
        yield DataTable(id="patch-features", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("feature", "act", "density", "label")

    def show(self, index, image: int, cursor: int, feature: int | None) -> None:
        table = self.query_one(DataTable)
        table.clear()
        top = index.top_features(image, cursor, 12)
        self.query_one("#patch-title", Static).update(
            f"top features of patch {cursor}" + (" (1-9 or enter opens one)" if top else ": none fire")
        )
        for number, value in top:
            table.add_row(
                Text(str(number), style="bold" if number == feature else ""),
                f"{value:.3g}",
                f"{index.density(number):.1e}",
                Text(index.label(number)),
                key=str(number),
            )

    def highlighted(self) -> int | None:
        """The feature under the table's cursor (the strongest, unless moved)."""
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        return int(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)


class FeatureListPane(Vertical):
    """Every feature of the index, sortable."""

    def compose(self) -> ComposeResult:
        yield Static("", id="list-title")
        yield FeatureList(id="feature-list", cursor_type="row", zebra_stripes=True)

    def show(self, index, sort: int, hide_dead: bool) -> None:
        self.query_one("#list-title", Static).update(self.query_one(FeatureList).fill(index, sort, hide_dead))


class FeatureView(Vertical):
    """One feature: what is known of it, and its top examples with heatmaps (arrows pick one, enter opens it)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.index = None
        self.all_examples = False
        """False: the strongest example of each image only; True: every top example (several per image)"""

    def compose(self) -> ComposeResult:
        yield FeatureStats(NO_FEATURE, id="feature-stats")
        yield ExamplesView(id="examples")
        yield Static("", id="example-caption")

    def show(self, index, feature: int, no_color: bool) -> None:
        self.index = index
        self.query_one(FeatureStats).show(index, feature)
        examples = index.top_examples(feature)
        examples = examples if self.all_examples else one_per_image(examples)
        vmax = index.heat_scale(feature)

        def draw_tile(example: tuple[int, int, float], tile: int) -> Image.Image:
            image, token, _value = example
            picture = overlay(index.thumbnail(image), index.heatmap(image, feature), tile, vmax, no_color)
            return draw_grid(picture, index.grid, token, lines=False)

        self.query_one(ExamplesView).set_examples(examples, draw_tile)

    def clear(self) -> None:
        self.query_one(FeatureStats).clear()
        self.query_one(ExamplesView).clear_examples()

    def on_examples_view_highlighted(self, event: ExamplesView.Highlighted) -> None:
        caption = self.query_one("#example-caption", Static)
        if event.example is None or self.index is None:
            caption.update("")
            return
        image, token, value = event.example
        total = len(self.query_one(ExamplesView).examples)
        scope = "" if self.all_examples else " (one per image)"
        # the numbers first, the words after: a narrow pane cuts the end of the line, never a number
        caption.update(
            Text(
                f"#{event.rank + 1}/{total} · act {value:.3g} · image {image} · patch {token} · "
                f"{self.index.image_info(image).class_name}{scope}"
            )
        )
