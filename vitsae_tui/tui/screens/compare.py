"""Compare: every SAE trained on one activation set, as FVU-vs-L0 and KL-recovered-vs-L0 scatters (one colour per
architecture) and a table with the L0-FVU Pareto set starred; points appear and move while a sweep trains."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Header, Select, Static

from vitsae_tui.engine import metrics
from vitsae_tui.engine.compare import SAEPoint, points
from vitsae_tui.engine.errors import UserError
from vitsae_tui.engine.text import shown
from vitsae_tui.formatting import table_cell, table_title
from vitsae_tui.tui.commands import ScreenCommands
from vitsae_tui.tui.screens.base import AppScreen
from vitsae_tui.tui.widgets.choices import refill_select
from vitsae_tui.tui.widgets.scatter_plot import COLORS, RICH_COLORS, ScatterPlot

REFRESH_S = 1.0
HINT = (
    "a sweep trains several SAEs in one pass: on the SAE screen (a) give lists, e.g. arch jumprelu,topk, "
    "l0-coeff 0.001,0.01 and k 8,32, or run `vitsae-tui train-sae --activations SET --l0-coeff 0.001,0.01`"
)


class CompareScreen(AppScreen):
    AUTO_FOCUS = "#compare-table"
    COMMANDS = {ScreenCommands}
    BINDINGS = [
        Binding("enter", "open_run", "Open run"),
        Binding("b", "browse", "Browse"),
        Binding("i", "index", "Index"),
        Binding("f5", "refresh_points", "Refresh", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="compare"):
            with Horizontal(id="compare-top"):
                yield Select([], prompt="(activation set)", id="compare_set", compact=True)
                yield Static("", id="compare-status")
            with Horizontal(id="compare-plots"):
                yield ScatterPlot("FVU", "L0", "FVU", id="plot_fvu")
                yield ScatterPlot("KL recovered vs L0", "L0", "KL recovered", log_y=False, y_ceiling=1.0, id="plot_kl")
            yield Static("", id="compare-legend")
            yield DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def palette(self):
        return [
            ("Open the selected SAE run", "Its curves on the SAE screen", "open_run"),
            ("Browse the selected SAE", "Its features in the browser (index it first: i)", "browse"),
            ("Index the selected SAE", "Build its feature index in the background", "index"),
        ]

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("run", "SAE", *(table_title(metric) for metric in metrics.COMPARE_SCREEN), "state")
        self.found: list[SAEPoint] = []
        self.shown_rows: tuple = ()
        self.refill_sets()
        self.set_interval(REFRESH_S, self.action_refresh_points)

    def on_screen_resume(self) -> None:
        self.refill_sets()

    def refill_sets(self) -> None:
        ws = self.app.workspace
        sets = [r.name for r in ws.runs("activations") if r.state == "finished"]
        select = self.query_one("#compare_set", Select)
        with_saes = {r.config.get("activations") for r in ws.runs("saes")}
        preferred = next((s for s in sets if s in with_saes), None)
        current = None if select.is_blank() else str(select.value)
        refill_select(select, [(s, s) for s in sets], current or self.app.lineage_run("activations") or preferred)
        self.action_refresh_points()

    def on_select_changed(self, event: Select.Changed) -> None:
        self.shown_rows = ()
        self.action_refresh_points()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.draw()

    async def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        await self.action_open_run()  # enter on the focused table selects its row

    def selected(self) -> SAEPoint | None:
        table = self.query_one(DataTable)
        if not self.found or table.cursor_row is None or not 0 <= table.cursor_row < len(self.found):
            return None
        return self.found[table.cursor_row]

    def action_refresh_points(self) -> None:
        select = self.query_one("#compare_set", Select)
        status = self.query_one("#compare-status", Static)
        if select.is_blank():
            self.found = []
            status.update(Text("no activation set yet: collect one (c), then train SAEs on it (a)"))
        else:
            try:
                self.found = points(self.app.workspace, str(select.value), live=True)
            except UserError as e:
                self.found = []
                status.update(Text(shown(e)))
            else:
                running = sum(p.state == "running" for p in self.found)
                count = f"{len(self.found)} SAE" + ("s" if len(self.found) > 1 else "")
                status.update(
                    Text(
                        f"{count} · ★ {sum(p.pareto for p in self.found)} on the L0-FVU frontier"
                        + (f" · {running} training (L0 and FVU live from training batches)" if running else "")
                        if self.found
                        else f"no evaluated SAE on this set yet. {HINT}"
                    )
                )
        self.fill_table()
        self.draw()

    def fill_table(self) -> None:
        rows = tuple(
            (
                ("★ " if p.pareto else "  ") + p.run,
                p.label,
                *(table_cell(metric, p.value(metric)) for metric in metrics.COMPARE_SCREEN),
                "live" if p.live else p.state if p.step >= p.total_steps else f"{p.step}/{p.total_steps}",
            )
            for p in self.found
        )
        if rows == self.shown_rows:  # unchanged: keep the cursor and skip the rebuild
            return
        self.shown_rows = rows
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear()
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        if rows:
            table.move_cursor(row=min(cursor or 0, len(rows) - 1))

    def draw(self) -> None:
        by_arch: dict[str, list[SAEPoint]] = {}
        for p in self.found:
            by_arch.setdefault(p.arch, []).append(p)
        legend = Text()
        for color, arch in zip(COLORS, by_arch):
            legend.append("● ", style=RICH_COLORS[color]).append(f"{arch}   ")
        legend.append("◉ selected · enter opens its run", style="dim")
        self.query_one("#compare-legend", Static).update(legend)
        chosen = self.selected()
        x = metrics.EVAL_L0
        for plot_id, y in (("plot_fvu", metrics.EVAL_FVU), ("plot_kl", metrics.KL_RECOVERED)):
            groups = {arch: [(p.value(x), p.value(y)) for p in group] for arch, group in by_arch.items()}
            mark = (chosen.value(x), chosen.value(y)) if chosen is not None else None
            self.query_one(f"#{plot_id}", ScatterPlot).show(groups, mark)

    def _chosen_or_say(self) -> SAEPoint | None:
        chosen = self.selected()
        if chosen is None:
            self.notify("no SAE selected: pick a row of the table first", severity="warning")
        return chosen

    async def action_open_run(self) -> None:
        chosen = self._chosen_or_say()
        if chosen is not None:
            await self.app.open_run("saes", chosen.run)

    async def action_browse(self) -> None:
        chosen = self._chosen_or_say()
        if chosen is None:
            return
        from vitsae_tui.engine.feature_index import index_exists

        if not index_exists(self.app.workspace, chosen.run):
            self.notify(f"{chosen.run} has no feature index yet: press i to build it", severity="warning")
            return
        await self.app.open_run("features", chosen.run)

    def action_index(self) -> None:
        chosen = self._chosen_or_say()
        if chosen is not None:
            self.app.action_build_index(chosen.run)
