"""Feature browser: an image as terminal pixels with its 6x6 token grid and a patch cursor, the selected patch's top
features, any feature's heatmap, stats and top examples, and a sortable list of all features."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import ContentSwitcher, DataTable, Footer, Header, Input, Label, Select, Static

from vitsae_tui.engine.cards import draw_grid, feature_card, image_card, overlay
from vitsae_tui.tui.widgets.choices import refill_select

SORTS = [("density", "frequency"), ("max_activation", "max activation"), ("concept", "concept AUROC")]
SPARK = "▁▂▃▄▅▆▇█"


def sparkline(counts: np.ndarray) -> str:
    peak = counts.max() if len(counts) and counts.max() > 0 else 1
    return "".join(SPARK[min(len(SPARK) - 1, int(c / peak * (len(SPARK) - 1)))] if c else " " for c in counts)


class PromptScreen(ModalScreen[str | None]):
    """One line of input in a dialog; escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, value: str = ""):
        super().__init__()
        self.question, self.value = question, value

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question)
            yield Input(self.value, id="answer")

    def on_mount(self) -> None:
        self.query_one("#answer", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ImageView(Static):
    """Draws one composed PIL image as half-block terminal pixels, sized to the widget, with a render cache."""

    def show(self, image: Image.Image) -> None:
        from rich_pixels import HalfcellRenderer, Pixels

        self.update(Pixels.from_image(image, renderer=HalfcellRenderer()))


class BrowserScreen(Screen):
    BINDINGS = [
        # priority, so they move the patch cursor even while a table has focus; check_action passes them on
        # to the table in the feature and list views
        Binding("left,h", "move(0,-1)", "←", show=False, priority=True),
        Binding("right,l", "move(0,1)", "→", show=False, priority=True),
        Binding("up,k", "move(-1,0)", "↑", show=False, priority=True),
        Binding("down,j", "move(1,0)", "↓", show=False, priority=True),
        *[Binding(str(n), f"open_top({n})", f"feature #{n}", show=False) for n in range(1, 10)],
        Binding("n,]", "image(1)", "Next image"),
        Binding("p,[", "image(-1)", "Prev image", show=False),
        Binding("g", "goto_image", "Go to image"),
        Binding("c", "class_filter", "Class filter"),
        Binding("f", "show('list-view')", "Features"),
        Binding("x", "focus_examples", "Examples"),
        Binding("slash", "goto_feature", "Feature id"),
        Binding("L", "label", "Label"),
        Binding("e", "export", "PNG"),
        Binding("E", "export_card", "Card PNG", show=False),
        Binding("o", "cycle_sort", "Sort", show=False),
        Binding("pagedown", "examples_page(1)", "More examples", show=False),
        Binding("pageup", "examples_page(-1)", "Previous examples", show=False),
        Binding("d", "toggle_dead", "Hide dead", show=False),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self):
        super().__init__()
        self.index = None
        self.image = 0
        self.cursor = 0
        self.feature: int | None = None
        self.class_filter: int | None = None
        self.sort = 0
        self.hide_dead = True
        self.example_page = 0
        self.renders: OrderedDict = OrderedDict()

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="browser"):
            with Vertical(id="image-pane"):
                yield Select([], prompt="(build an index first)", id="index", compact=True)
                yield Static("", id="image-title")
                yield ImageView(id="image")
            # the feature panel is always shown, so opening a feature never switches views (a restyle costs ~150 ms)
            with Vertical(id="side-pane"):
                with ContentSwitcher(initial="patch-view", id="side"):
                    with Vertical(id="patch-view"):
                        yield Static("", id="patch-title")
                        yield DataTable(id="patch-features", cursor_type="row", zebra_stripes=True)
                    with Vertical(id="list-view"):
                        yield Static("", id="list-title")
                        yield DataTable(id="feature-list", cursor_type="row", zebra_stripes=True)
                with Vertical(id="feature-view"):
                    yield Static("no feature open: 1-9 or enter opens one of the patch's features, f lists all", id="feature-stats")
                    yield ImageView(id="examples")
                    yield DataTable(id="feature-examples", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#patch-features", DataTable).add_columns("feature", "act", "density", "label")
        self.query_one("#feature-examples", DataTable).add_columns("#", "image", "patch", "act", "class")
        self.query_one("#feature-list", DataTable).add_columns("feature", "density", "max", "concept", "label")
        self.refresh_indexes()

    def on_screen_resume(self) -> None:
        self.refresh_indexes()

    def refresh_indexes(self) -> None:
        runs = [r for r in self.app.workspace.runs("features") if r.state == "finished"]
        select = self.query_one("#index", Select)
        refill_select(select, [(r.name, r.name) for r in runs])

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "move":  # arrows reach the tables when the feature list or the examples table has focus
            return (self.app.screen is self and self.query_one("#side", ContentSwitcher).current == "patch-view"
                    and self.focused is not self.query_one("#feature-examples", DataTable))
        return True

    def on_select_changed(self, event: Select.Changed) -> None:
        # refreshing the options on screen resume re-sends the same value: keep the open index and position
        if event.select.id == "index" and isinstance(event.value, str) and (self.index is None or self.index.dir.name != event.value):
            self.open_index(event.value)

    def open_index(self, name: str) -> None:
        from vitsae_tui.engine.features import FeatureIndex

        try:
            self.index = FeatureIndex(self.app.workspace, name)
        except Exception as e:  # a damaged or stale index: say so and keep the screen usable
            self.index = None
            self.notify(str(e), severity="error", timeout=10, markup=False)
            return
        self.image, self.cursor, self.feature, self.class_filter = 0, 0, None, None
        self.renders.clear()
        self.fill_feature_list()
        self.refresh_image()
        self.query_one("#patch-features", DataTable).focus()

    # --- drawing -------------------------------------------------------------------------------------------------

    def pixel_size(self, widget: Static, max_px: int = 224) -> int:
        """Largest square (in pixels) that fits the widget: one column per pixel, two pixels per row."""
        width, height = widget.size.width, widget.size.height * 2
        grid = self.index.store.manifest["grid"][0] if self.index else 6
        side = max(grid * 2, min(width, height, max_px))
        return side - side % grid

    def composed_image(self, size: int) -> Image.Image:
        key = (self.image, self.feature, self.cursor, size)
        if key not in self.renders:
            thumb = self.index.store.thumbnail(self.image)
            if self.feature is None:
                picture = Image.fromarray(thumb).resize((size, size), Image.LANCZOS)
            else:
                vmax = float(self.index.arrays["max_activation"][self.feature]) or None
                picture = overlay(thumb, self.index.heatmap(self.image, self.feature), size, vmax)
            self.renders[key] = draw_grid(picture, self.index.store.manifest["grid"][0], self.cursor)
            if len(self.renders) > 64:
                self.renders.popitem(last=False)
        return self.renders[key]

    def refresh_image(self) -> None:
        if self.index is None:
            return
        store = self.index.store
        entry = store.manifest["images"][self.image]
        names = store.class_names
        label = names[entry["label"]] if 0 <= entry["label"] < len(names) else "unlabelled"
        grid = store.manifest["grid"][1]
        row, col = divmod(self.cursor, grid)
        filt = f" · only {names[self.class_filter]}" if self.class_filter is not None else ""
        feature = f" · heatmap of feature {self.feature}" if self.feature is not None else ""
        self.query_one("#image-title", Static).update(
            f"image {self.image}/{store.n_images - 1} · {label}{filt} · patch {self.cursor} ({row},{col}){feature}")
        view = self.query_one("#image", ImageView)
        view.show(self.composed_image(self.pixel_size(view)))
        self.fill_patch_features()

    def fill_patch_features(self) -> None:
        table = self.query_one("#patch-features", DataTable)
        table.clear()
        density = self.index.arrays["density"]
        top = self.index.top_features(self.image, self.cursor, 12)
        self.query_one("#patch-title", Static).update(
            f"top features of patch {self.cursor}" + (" (1-9 or enter opens one)" if top else ": none fire"))
        for feature, value in top:
            style = "bold" if feature == self.feature else ""
            table.add_row(Text(str(feature), style=style), f"{value:.3g}", f"{density[feature]:.1e}", self.index.label(feature), key=str(feature))

    def show_feature(self, feature: int) -> None:
        index = self.index
        if not 0 <= feature < index.d_sae:
            self.notify(f"feature {feature} is outside 0..{index.d_sae - 1}", severity="error")
            return
        self.feature = feature
        a = index.arrays
        promoted, suppressed = index.class_effect(feature, 2)
        lines = [f"[b]feature {feature}[/]" + (f" — {index.label(feature)}" if index.label(feature) else ""),
                 f"density {a['density'][feature]:.2e} · max {a['max_activation'][feature]:.3g} · mean {a['mean_activation'][feature]:.3g}",
                 f"act/θ 1×…256× [{sparkline(a['activation_hist'][feature])}]",
                 "promotes " + ", ".join(f"{n} {v:+.2f}" for n, v in promoted) + " · suppresses " + ", ".join(f"{n} {v:+.2f}" for n, v in suppressed)]
        distribution = index.class_distribution(feature)[:3]
        if distribution:
            lines.append("fires on " + ", ".join(f"{n} {p:.0%}" for n, p in distribution))
        for c in index.matched_concepts.get(feature, []):
            lines.append(f"matches {c['concept']}: AUROC {c['feature_auroc']:.2f} (neuron {c['neuron_auroc']:.2f}, probe {c['probe_auroc']:.2f})")
        bands = index.band_examples(feature)
        lines.append("bands " + " | ".join(", ".join(f"{i}/{t}" for i, t, _ in band[:2]) for band in bands if band))
        self.query_one("#feature-stats", Static).update("\n".join(lines))
        examples = index.top_examples(feature)
        table = self.query_one("#feature-examples", DataTable)
        table.clear()
        names = index.store.class_names
        for rank, (image, token, value) in enumerate(examples, 1):
            lab = index.store.manifest["images"][image]["label"]
            table.add_row(str(rank), str(image), str(token), f"{value:.3g}", names[lab] if 0 <= lab < len(names) else "-", key=f"{image}:{token}")
        self.call_after_refresh(self.draw_examples)  # once the view is laid out, so the grid fits its real size
        self.refresh_image()

    def draw_examples(self, page: int = 0) -> None:
        """As many top-example thumbnails (with heatmaps) as the widget fits, composed into one image."""
        if self.feature is None:
            return
        view = self.query_one("#examples", ImageView)
        examples = self.index.top_examples(self.feature)
        width, height = max(view.size.width, 12), max(view.size.height * 2, 12)
        tile = min(24 if width >= 96 else 18, max(8, height - 1))
        columns, rows = max(1, width // (tile + 1)), max(1, height // (tile + 1))
        per_page = columns * rows
        self.example_page = page % max(1, -(-len(examples) // per_page))
        shown = examples[self.example_page * per_page : (self.example_page + 1) * per_page]
        canvas = Image.new("RGB", (columns * (tile + 1), rows * (tile + 1)), (0, 0, 0))
        vmax = float(self.index.arrays["max_activation"][self.feature]) or None
        for k, (image, token, _value) in enumerate(shown):
            r, c = divmod(k, columns)
            tile_image = overlay(self.index.store.thumbnail(image), self.index.heatmap(image, self.feature), tile, vmax)
            canvas.paste(draw_grid(tile_image, self.index.store.manifest["grid"][0], token), (c * (tile + 1), r * (tile + 1)))
        view.show(canvas)

    def fill_feature_list(self) -> None:
        index = self.index
        a = index.arrays
        key, title = SORTS[self.sort]
        best_concept = {}
        for c in index.concepts:
            best_concept[c["feature"]] = max(best_concept.get(c["feature"], 0.0), c["feature_auroc"])
        ids = np.arange(index.d_sae)
        if self.hide_dead:
            ids = ids[a["density"][ids] > 0]
        score = np.array([best_concept.get(int(i), 0.0) for i in ids]) if key == "concept" else a[key][ids]
        ids = ids[np.argsort(-score, kind="stable")]
        table = self.query_one("#feature-list", DataTable)
        table.clear()
        for i in ids[:2000]:
            concept = next((c["concept"] for c in index.concepts if c["feature"] == i), "")
            table.add_row(str(i), f"{a['density'][i]:.1e}", f"{a['max_activation'][i]:.3g}", concept, index.label(int(i)), key=str(i))
        dead = int((a["density"] == 0).sum())
        self.query_one("#list-title", Static).update(
            f"{len(ids)} features by {title} (o: sort) · {dead} dead {'hidden' if self.hide_dead else 'shown'} (d) · / jumps to an id")

    # --- actions ---------------------------------------------------------------------------------------------------

    def action_move(self, d_row: int, d_col: int) -> None:
        if self.index is None:
            return
        grid = self.index.store.manifest["grid"][1]
        row, col = divmod(self.cursor, grid)
        row, col = min(max(row + d_row, 0), grid - 1), min(max(col + d_col, 0), grid - 1)
        self.cursor = row * grid + col
        self.refresh_image()

    def action_image(self, step: int) -> None:
        if self.index is None:
            return
        labels = self.index.store.labels()
        candidate = self.image
        for _ in range(self.index.store.n_images):
            candidate = (candidate + step) % self.index.store.n_images
            if self.class_filter is None or labels[candidate] == self.class_filter:
                break
        self.image = candidate
        self.refresh_image()

    def action_open_top(self, n: int) -> None:
        """Open the n-th strongest feature of the selected patch."""
        if self.index is None:
            return
        top = self.index.top_features(self.image, self.cursor, 12)
        if n <= len(top):
            self.show_feature(top[n - 1][0])

    def open_image(self, image: int, token: int) -> None:
        self.image, self.cursor = image, token
        self.query_one("#side", ContentSwitcher).current = "patch-view"
        self.query_one("#patch-features", DataTable).focus()
        self.refresh_image()

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
            self.ask_number("go to image", self.index.store.n_images, lambda image: self.open_image(image, self.cursor))

    def action_goto_feature(self) -> None:
        if self.index is not None:
            self.ask_number("feature id", self.index.d_sae, self.show_feature)

    def action_class_filter(self) -> None:
        if self.index is None or not self.index.store.class_names:
            self.notify("this set has no class labels to filter by", severity="warning")
            return
        n = len(self.index.store.class_names)
        self.class_filter = 0 if self.class_filter is None else (None if self.class_filter + 1 >= n else self.class_filter + 1)
        if self.class_filter is not None and self.index.store.labels()[self.image] != self.class_filter:
            self.action_image(1)
        else:
            self.refresh_image()

    def action_show(self, view: str) -> None:
        if self.index is not None:
            self.query_one("#side", ContentSwitcher).current = view
            self.query_one("#feature-list" if view == "list-view" else "#patch-features", DataTable).focus()

    def action_focus_examples(self) -> None:
        """Move focus to the open feature's top examples (arrows pick one, enter opens it)."""
        if self.feature is not None:
            self.query_one("#feature-examples", DataTable).focus()

    def action_back(self) -> None:
        switcher = self.query_one("#side", ContentSwitcher)
        if switcher.current != "patch-view" or self.focused is self.query_one("#feature-examples", DataTable):
            switcher.current = "patch-view"
            self.query_one("#patch-features", DataTable).focus()
        elif self.feature is not None:
            self.feature = None
            self.query_one("#feature-stats", Static).update("no feature open: 1-9 or enter opens one of the patch's features")
            self.query_one("#feature-examples", DataTable).clear()
            self.query_one("#examples", ImageView).update("")
            self.refresh_image()
        else:
            self.app.switch_mode("home")

    def action_examples_page(self, step: int) -> None:
        if self.feature is not None:
            self.draw_examples(self.example_page + step)

    def action_cycle_sort(self) -> None:
        if self.index is not None:
            self.sort = (self.sort + 1) % len(SORTS)
            self.fill_feature_list()

    def action_toggle_dead(self) -> None:
        if self.index is not None:
            self.hide_dead = not self.hide_dead
            self.fill_feature_list()

    def action_label(self) -> None:
        if self.index is None or self.feature is None:
            self.notify("open a feature first (enter on a feature), then press L to label it", severity="warning")
            return
        feature = self.feature

        def answered(text: str | None) -> None:
            if text is not None:
                self.index.set_label(feature, text)
                self.show_feature(feature)
                self.fill_feature_list()

        self.app.push_screen(PromptScreen(f"label for feature {feature} (empty removes it)", self.index.label(feature)), answered)

    def action_export(self) -> None:
        """The visible image, its grid, the selected patch and the open feature's heatmap, as a PNG in the cwd."""
        if self.index is None:
            return
        suffix = f"-feature-{self.feature}" if self.feature is not None else ""
        path = image_card(self.index, self.image, Path.cwd() / f"image-{self.image}{suffix}.png", self.feature, self.cursor)
        self.notify(f"wrote {path}")

    def action_export_card(self) -> None:
        """The open feature's card (stats and top examples with heatmaps) as a PNG in the cwd."""
        if self.index is None or self.feature is None:
            self.notify("open a feature first, then E writes its card", severity="warning")
            return
        self.notify(f"wrote {feature_card(self.index, self.feature, Path.cwd() / f'feature-{self.feature}.png')}")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value
        if event.data_table.id in ("patch-features", "feature-list"):
            self.show_feature(int(key))
        elif event.data_table.id == "feature-examples":
            image, token = (int(v) for v in key.split(":"))
            self.open_image(image, token)
