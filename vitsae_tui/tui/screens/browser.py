"""Feature browser: an image as terminal pixels with its token grid and a patch cursor, the selected patch's top
features, any feature's heatmap, stats and top examples, and a sortable list of all features.

The screen owns the state (reactive `image`, `cursor`, `feature`, `edits`, and the workbench's `attribution_on` and
`target`); each change marks what depends on it, and the panes (`browser_panes`) redraw once per change, or once
after a batch of changes. The index loads and the workbench computes in threads that post typed messages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import var
from textual.widgets import ContentSwitcher, DataTable, Footer, Header, Select

from vitsae_tui.engine.cards import feature_card, image_card
from vitsae_tui.engine.errors import UserError, bug_message, is_user_error, log_bug, resource_message, user_message
from vitsae_tui.engine.perf import one_intra_op_thread
from vitsae_tui.engine.text import MAX_MESSAGE, shown
from vitsae_tui.engine.workbench import Edit
from vitsae_tui.tui.commands import ScreenCommands
from vitsae_tui.tui.screens.base import AppScreen
from vitsae_tui.tui.screens.prompt import PromptScreen
from vitsae_tui.tui.screens.stage import COMPACT_HEIGHT
from vitsae_tui.tui.widgets.browser_panes import (
    FeatureListPane,
    FeatureView,
    ImagePane,
    ImageView,
    PatchFeatures,
    WorkbenchPane,
)
from vitsae_tui.tui.widgets.choices import choose, refill_select
from vitsae_tui.tui.widgets.examples_view import ExamplesView
from vitsae_tui.tui.widgets.feature_list import SORTS
from vitsae_tui.tui.widgets.patch_image import PatchImage

STACKED_HEIGHT = 50
"""from this many rows up the side pane shows the patch's features (or the list) and the open feature together"""


class BrowserScreen(AppScreen):
    COMMANDS = {ScreenCommands}
    BINDINGS = [
        # the arrows move the patch cursor while the image has focus (its own bindings); hjkl do it from anywhere
        Binding("h", "move(0,-1)", "←", show=False),
        Binding("l", "move(0,1)", "→", show=False),
        Binding("k", "move(-1,0)", "↑", show=False),
        Binding("j", "move(1,0)", "↓", show=False),
        *[Binding(str(n), f"open_top({n})", f"feature #{n}", show=False) for n in range(1, 10)],
        Binding("n,]", "image(1)", "Next"),
        Binding("p,[", "image(-1)", "Prev", show=False),
        Binding("g", "goto_image", "Image #"),
        Binding("c", "class_filter", "Class", show=False),
        Binding("f", "show_list", "Features"),
        Binding("x", "focus_examples", "Examples"),
        Binding("slash", "goto_feature", "Feature #", show=False),
        Binding("L", "label", "Label", show=False),
        Binding("e", "export", "PNG", show=False),
        Binding("E", "export_card", "Card PNG", show=False),
        Binding("o", "cycle_sort", "Sort", show=False),
        Binding("d", "toggle_dead", "Dead", show=False),
        Binding("D", "toggle_one_per_image", "One per image", show=False),
        Binding("a", "toggle_attribution", "Attribute", show=False),
        Binding("t", "pick_target", "Target class", show=False),
        Binding("z", "edit('zero')", "Zero", show=False),
        Binding("plus", "edit('scale', 2.0)", "×2", show=False),
        Binding("minus", "edit('scale', 0.5)", "×½", show=False),
        Binding("m", "edit('clamp')", "Clamp to max", show=False),
        Binding("u", "undo_edit", "Undo edit", show=False),
        Binding("A", "toggle_edit_scope", "Edit all patches", show=False),
        # priority: a focused table would otherwise take page up/down for itself
        Binding("pagedown", "examples_page(1)", "More examples", show=False, priority=True),
        Binding("pageup", "examples_page(-1)", "Previous examples", show=False, priority=True),
        Binding("escape", "back", "Back"),
    ]

    image: var[int] = var(0, init=False)
    cursor: var[int] = var(0, init=False)
    feature: var[int | None] = var(None, init=False)
    edits: var[tuple[Edit, ...]] = var((), init=False)
    """feature edits on the shown image, in order (cleared with the image)"""
    attribution_on: var[bool] = var(False, init=False)
    target: var[int | None] = var(None, init=False)
    """the class attributed and followed (None: the predicted one)"""

    class IndexLoaded(Message):
        """An index finished loading (or failed to, with the sentence to show)."""

        def __init__(self, name: str, index, message: str = ""):
            super().__init__()
            self.name, self.index, self.message = name, index, message

    def __init__(self):
        super().__init__()
        self.index = None
        self.class_filter: int | None = None
        self.sort = 0
        self.hide_dead = True
        self.side_mode = "patch"
        """what the side pane shows: the patch's features, the feature list, or the open feature"""
        self.edit_all_patches = False
        self.dirty: set[str] = set()
        """what the state changes since the last redraw affect: 'image' (image, patch table, workbench), 'feature'"""
        self.batching = 0

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="browser"):
            yield ImagePane(id="image-pane")
            with Vertical(id="side-pane"):
                with ContentSwitcher(initial="patch-view", id="side"):
                    yield PatchFeatures(id="patch-view")
                    yield FeatureListPane(id="list-view")
                yield FeatureView(id="feature-view")
        yield Footer(compact=True)

    # -- state and redrawing ---------------------------------------------------------------------------------------

    def watch_image(self) -> None:
        with self.batch():
            self.edits = ()  # edits belong to the image they were made on
            self.changed("image")

    def watch_cursor(self) -> None:
        self.changed("image")

    def watch_feature(self) -> None:
        self.changed("image", "feature")

    def watch_edits(self) -> None:
        self.changed("image")

    def watch_attribution_on(self) -> None:
        self.changed("image")

    def watch_target(self) -> None:
        self.changed("image")

    def changed(self, *parts: str) -> None:
        """Mark what a state change affects and redraw it, unless a batch of changes is still being made."""
        self.dirty.update(parts)
        if not self.batching:
            self.redraw()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Several state changes, one redraw at the end."""
        self.batching += 1
        try:
            yield
        finally:
            self.batching -= 1
            if not self.batching and self.dirty:
                self.redraw()

    def redraw(self) -> None:
        parts, self.dirty = self.dirty, set()
        if self.index is None or not self.is_mounted:
            return
        with one_intra_op_thread():  # tiny ops: the app's other threads would stall a woken thread pool
            self.draw(parts)

    def draw(self, parts: set[str]) -> None:
        if "feature" in parts:
            view = self.query_one(FeatureView)
            if self.feature is None:
                view.clear()
            else:
                view.show(self.index, self.feature, self.app.no_color)
        key = self.workbench_key()
        heat = self.query_one(WorkbenchPane).show(self.app.workspace, key, self.cursor, self.edit_all_patches)
        state = ImageView(self.image, self.cursor, self.feature, self.class_filter, heat, bool(self.edits))
        self.query_one(ImagePane).show(self.index, state, self.app.no_color)
        self.query_one(PatchFeatures).show(self.index, self.image, self.cursor, self.feature)

    # -- layout ----------------------------------------------------------------------------------------------------

    def on_mount(self) -> None:
        self.apply_layout()
        self.refresh_indexes()

    def on_screen_resume(self) -> None:
        self.refresh_indexes()

    def on_resize(self) -> None:
        self.apply_layout()

    def on_patch_image_resized(self, _message: PatchImage.Resized) -> None:
        self.changed("image")

    def apply_layout(self) -> None:
        """Below STACKED_HEIGHT rows the side pane shows one panel at a time: the patch's features, the feature list
        or the open feature (whose examples then get the room to be seen)."""
        one_panel = self.size.height < STACKED_HEIGHT
        self.set_class(self.size.height < COMPACT_HEIGHT, "compact")
        self.set_class(one_panel, "one-panel")
        # only a one-panel layout styles feature mode: toggling the class restyles the whole screen (~40 ms)
        self.set_class(one_panel and self.side_mode == "feature", "feature-mode")

    def set_side(self, mode: str) -> None:
        self.side_mode = mode
        if mode != "feature":
            self.query_one("#side", ContentSwitcher).current = f"{mode}-view"
        self.apply_layout()

    # -- the index -------------------------------------------------------------------------------------------------

    def refresh_indexes(self) -> None:
        runs = [r for r in self.app.workspace.runs("features") if r.state == "finished"]
        refill_select(
            self.query_one("#index", Select), [(r.name, r.name) for r in runs], self.app.lineage_run("features")
        )

    def show_run(self, index_dir: Path) -> None:
        """Open one index (from home)."""
        self.refresh_indexes()
        if not choose(self.query_one("#index", Select), index_dir.name):
            self.notify(f"features/{index_dir.name} is not a finished index yet", severity="warning", markup=False)

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        # while the index list is open, keys belong to it (typing must not move the cursor or write files)
        return not self.query_one("#index", Select).expanded

    def on_select_changed(self, event: Select.Changed) -> None:
        # refreshing the options on screen resume re-sends the same value: keep the open index and position
        if (
            event.select.id == "index"
            and isinstance(event.value, str)
            and (self.index is None or self.index.dir.name != event.value)
        ):
            self.load_index(event.value)

    @work(thread=True, exclusive=True, group="index")
    def load_index(self, name: str) -> None:
        """Open an index off the UI thread (a large one maps hundreds of megabytes)."""
        from vitsae_tui.engine.feature_index import FeatureIndex

        try:
            index = FeatureIndex(self.app.workspace, name)
        except Exception as e:  # a damaged or stale index: say so and keep the screen usable
            message = user_message(e) if is_user_error(e) else bug_message(e, log_bug(e, self.app.workspace.root))
            self.post_message(self.IndexLoaded(name, None, shown(message, MAX_MESSAGE)))
            return
        self.post_message(self.IndexLoaded(name, index))

    def on_browser_screen_index_loaded(self, event: IndexLoaded) -> None:
        selected = self.query_one("#index", Select)
        if selected.value != event.name:
            return  # another index was picked while this one loaded
        if event.index is None:
            self.index = None
            self.notify(event.message, severity="error", timeout=10, markup=False)
            return
        self.index = event.index
        self.query_one(ImagePane).forget()
        with self.batch():
            self.image, self.cursor, self.class_filter = 0, 0, None
            self.close_feature()
            self.changed("image")
        self.fill_feature_list()
        self.query_one("#image", PatchImage).focus()

    @property
    def grid(self) -> int:
        return self.index.grid if self.index else 6

    # -- navigation ------------------------------------------------------------------------------------------------

    def show_feature(self, feature: int) -> None:
        index = self.index
        if not 0 <= feature < index.d_sae:
            self.notify(f"feature {feature} is outside 0..{index.d_sae - 1}", severity="error")
            return
        tables = (self.query_one("#patch-features", DataTable), self.query_one("#feature-list", DataTable))
        with self.batch():
            self.feature = feature
            self.changed("feature")  # the same feature again: its stats may have changed (a new label)
            self.set_side("feature")
        if self.focused is None or (self.has_class("one-panel") and self.focused in tables):
            self.query_one("#image", PatchImage).focus()  # the table that had focus is hidden now

    def on_examples_view_opened(self, event: ExamplesView.Opened) -> None:
        image, token, _value = event.example
        self.open_image(image, token)

    def close_feature(self) -> None:
        self.feature = None
        self.set_side("patch")

    def fill_feature_list(self) -> None:
        self.query_one(FeatureListPane).show(self.index, self.sort, self.hide_dead)

    def action_move(self, d_row: int, d_col: int) -> None:
        if self.index is None:
            return
        row, col = divmod(self.cursor, self.grid)
        row, col = min(max(row + d_row, 0), self.grid - 1), min(max(col + d_col, 0), self.grid - 1)
        self.cursor = row * self.grid + col

    def action_image(self, step: int) -> None:
        if self.index is None:
            return
        labels = self.index.image_labels()
        candidate = self.image
        for _ in range(self.index.n_images):
            candidate = (candidate + step) % self.index.n_images
            if self.class_filter is None or labels[candidate] == self.class_filter:
                break
        self.image = candidate

    def action_open_top(self, n: int) -> None:
        """Open the n-th strongest feature of the selected patch."""
        if self.index is None:
            return
        top = self.index.top_features(self.image, self.cursor, 12)
        if n <= len(top):
            self.show_feature(top[n - 1][0])
        else:
            self.notify(f"patch {self.cursor} has {len(top)} firing feature(s)", severity="warning")

    def action_open_highlighted(self) -> None:
        """enter on the image: open the feature highlighted in the patch's table (the strongest, unless moved)."""
        feature = self.query_one(PatchFeatures).highlighted() if self.index is not None else None
        if feature is not None:
            self.show_feature(feature)

    def open_image(self, image: int, token: int) -> None:
        with self.batch():
            self.image, self.cursor = image, token
            self.set_side("feature" if self.feature is not None else "patch")
        self.query_one("#image", PatchImage).focus()

    def ask_number(self, question: str, upper: int, then) -> None:
        """Prompt for a whole number in [0, upper) and pass it on, or say what to type."""

        def answered(text: str | None) -> None:
            if text is None:
                return
            try:
                value = int(text)
                if not 0 <= value < upper:
                    raise ValueError
            except ValueError:
                self.notify(f"type a number from 0 to {upper - 1}", severity="error")
                return
            then(value)

        self.app.push_screen(PromptScreen(f"{question} (0-{upper - 1})"), answered)

    def action_goto_image(self) -> None:
        if self.index is not None:
            self.ask_number("go to image", self.index.n_images, lambda image: self.open_image(image, self.cursor))

    def action_goto_feature(self) -> None:
        if self.index is not None:
            self.ask_number("feature id", self.index.d_sae, self.show_feature)

    def action_class_filter(self) -> None:
        if self.index is None or not self.index.class_names:
            self.notify("this set has no class labels to filter by", severity="warning")
            return
        n = len(self.index.class_names)
        with self.batch():
            self.class_filter = (
                0 if self.class_filter is None else (None if self.class_filter + 1 >= n else self.class_filter + 1)
            )
            self.changed("image")
            if self.class_filter is not None and self.index.image_labels()[self.image] != self.class_filter:
                self.action_image(1)

    def action_show_list(self) -> None:
        if self.index is not None:
            self.set_side("list")
            self.query_one("#feature-list", DataTable).focus()

    def action_focus_examples(self) -> None:
        """Move focus to the open feature's top examples (arrows pick one, enter opens it)."""
        if self.feature is None:
            self.notify("open a feature first (1-9 or enter), then x picks one of its examples", severity="warning")
            return
        self.set_side("feature")
        self.query_one("#examples", ExamplesView).focus()

    # -- the workbench ---------------------------------------------------------------------------------------------

    def model_class_names(self) -> tuple[str, ...]:
        """The classes of the model behind the index (what the workbench attributes and follows)."""
        return tuple(self.index.meta.model_class_names) or tuple(self.index.class_names)

    def workbench_key(self) -> tuple:
        return (self.index, self.image, self.target, self.attribution_on, self.edits)

    def on_workbench_pane_done(self, event: WorkbenchPane.Done) -> None:
        current = event.key == self.workbench_key()
        if event.message:
            self.notify(event.message, severity="error", timeout=10, markup=False)
            if current:
                with self.batch():
                    self.attribution_on, self.edits = False, ()
        elif current:
            self.changed("image")

    def action_toggle_attribution(self) -> None:
        if self.index is not None:
            self.attribution_on = not self.attribution_on

    def action_pick_target(self) -> None:
        from vitsae_tui.engine.workbench import resolve_class

        if self.index is None:
            return
        names = self.model_class_names()

        def answered(text: str | None) -> None:
            if text is None:
                return
            try:
                target = resolve_class(text, names)
            except UserError as e:
                self.notify(shown(e, MAX_MESSAGE), severity="error", markup=False)
                return
            with self.batch():
                self.target = target
                self.attribution_on = self.attribution_on or not self.edits

        listing = " · ".join(f"{i} {name}" for i, name in enumerate(names))
        self.app.push_screen(PromptScreen(f"class to attribute and follow, by number or name: {listing}"), answered)

    def action_edit(self, mode: str, value: float = 0.0) -> None:
        if self.index is None:
            return
        if self.feature is None:
            self.notify("open a feature first (1-9, enter or /): z, +, - and m edit it", severity="warning")
            return
        if mode == "clamp":
            value = float(self.index.arrays.max_activation[self.feature])
        patches = None if self.edit_all_patches else (self.cursor,)
        self.edits = (*self.edits, Edit((self.feature,), mode, value, patches))

    def action_zero_feature(self) -> None:
        self.action_edit("zero")

    def action_undo_edit(self) -> None:
        if self.edits:
            self.edits = self.edits[:-1]
        else:
            self.notify("no edit to undo", severity="warning")

    def action_toggle_edit_scope(self) -> None:
        self.edit_all_patches = not self.edit_all_patches
        self.notify("edits apply to every patch" if self.edit_all_patches else "edits apply to the cursor patch")
        self.changed("image")

    def palette(self) -> list[tuple[str, str, str]]:
        return [
            ("Feature list", "All features, sortable; enter opens one", "show_list"),
            ("Go to feature", "Open a feature by id", "goto_feature"),
            ("Go to image", "Open an image by number", "goto_image"),
            ("Label feature", "Name the open feature (saved in the workspace)", "label"),
            ("Export PNG", "Write the image with the open feature's heatmap as a PNG", "export"),
            ("Export feature card", "Write the open feature's card (top images with heatmaps) as a PNG", "export_card"),
            ("Attribute", "Attribute the image's prediction to features and patches (a)", "toggle_attribution"),
            ("Target class", "The class to attribute and follow (t)", "pick_target"),
            ("Zero feature", "Zero the open feature on the cursor patch, or every patch with A (z)", "zero_feature"),
            ("Undo edit", "Take back the last feature edit (u)", "undo_edit"),
        ]

    def action_back(self) -> None:
        examples = self.query_one("#examples", ExamplesView)
        if self.side_mode == "list" or self.focused is examples:
            self.set_side("feature" if self.feature is not None else "patch")
            self.query_one("#image", PatchImage).focus()
        elif self.feature is not None:
            self.close_feature()
            self.query_one("#image", PatchImage).focus()
        else:
            self.app.switch_mode("home")

    def action_examples_page(self, step: int) -> None:
        if self.feature is None:
            self.notify("open a feature first: page up/down page its top examples", severity="warning")
            return
        self.query_one("#examples", ExamplesView).page(step)

    def action_toggle_one_per_image(self) -> None:
        view = self.query_one(FeatureView)
        view.all_examples = not view.all_examples
        self.notify(
            "top examples: every patch" if view.all_examples else "top examples: the strongest patch of each image"
        )
        if self.feature is not None:
            self.changed("feature")

    def action_cycle_sort(self) -> None:
        if self.index is not None:
            self.sort = (self.sort + 1) % len(SORTS)
            self.fill_feature_list()
            self.set_side("list")

    def action_toggle_dead(self) -> None:
        if self.index is not None:
            self.hide_dead = not self.hide_dead
            self.fill_feature_list()
            self.set_side("list")

    def action_label(self) -> None:
        if self.index is None or self.feature is None:
            self.notify("open a feature first (enter on a feature), then press L to label it", severity="warning")
            return
        feature = self.feature

        def answered(text: str | None) -> None:
            if text is None:
                return
            try:
                self.index.set_label(feature, text)
            except OSError as e:  # the index folder was deleted, or the disk is full or read-only
                where = shown(self.index.dir)
                problem = resource_message(e) or f"{where} cannot be written ({e.strerror})"
                self.notify(f"the label was not saved: {problem}", severity="error", markup=False)
                return
            self.show_feature(feature)
            self.fill_feature_list()

        self.app.push_screen(
            PromptScreen(f"label for feature {feature} (empty removes it)", self.index.label(feature)), answered
        )

    def action_export(self) -> None:
        """The visible image, its grid, the selected patch and the open feature's heatmap, as a PNG in the cwd."""
        if self.index is None:
            return
        suffix = f"-feature-{self.feature}" if self.feature is not None else ""
        name = f"image-{self.image}{suffix}.png"
        self.write_png(lambda folder: image_card(self.index, self.image, folder / name, self.feature, self.cursor))

    def action_export_card(self) -> None:
        """The open feature's card (stats and top examples with heatmaps) as a PNG in the cwd."""
        if self.index is None or self.feature is None:
            self.notify("open a feature first, then E writes its card", severity="warning")
            return
        feature = self.feature
        self.write_png(lambda folder: feature_card(self.index, feature, folder / f"feature-{feature}.png"))

    def write_png(self, write) -> None:
        """Write a PNG into the working folder; a missing, full or read-only one is a sentence, not a crash."""
        try:
            path = write(Path.cwd())
        except OSError as e:
            problem = resource_message(e) or f"the working folder cannot be written ({e.strerror})"
            self.notify(
                f"no PNG written: {problem}; start vitsae-tui from a writable folder", severity="error", markup=False
            )
            return
        self.notify(f"wrote {shown(path)}", markup=False)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id in ("patch-features", "feature-list"):
            self.show_feature(int(event.row_key.value))
