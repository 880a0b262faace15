"""Home: the workspace at a glance (runs and their state, newest first), running jobs, and what to do next."""

from __future__ import annotations

import time

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from vitsae_tui.engine.workspace import KINDS, RunInfo

STATE_STYLE = {"finished": "green", "running": "cyan", "failed": "red", "stopped": "yellow", "interrupted": "yellow", "damaged": "red"}


def run_details(run: RunInfo) -> str:
    status = run.status
    if run.state == "failed":
        return str(status.get("message", ""))[:60]
    parts = []
    if isinstance(status.get("best_val_accuracy"), (int, float)):
        parts.append(f"val acc {status['best_val_accuracy']:.1%}")
    if isinstance(status.get("tokens"), int):
        parts.append(f"{status.get('images', 0)} images · {status['tokens']:,} tokens · d {status.get('d_model', '?')}")
    if isinstance(status.get("mean_feature_auroc"), (int, float)):
        parts.append(f"concept AUROC SAE {status['mean_feature_auroc']:.3f} vs neuron {status.get('mean_neuron_auroc', 0):.3f}")
    if isinstance(status.get("alive"), int):
        parts.append(f"{status['alive']}/{status.get('features', '?')} alive")
    if isinstance(status.get("fvu"), (int, float)) and isinstance(status.get("l0"), (int, float)):
        parts.append(f"FVU {status['fvu']:.3f} · L0 {status['l0']:.1f}")
    if isinstance(status.get("step"), int):
        total = status.get("total_steps")
        parts.append(f"step {status['step']}" + (f"/{total}" if total else ""))
    preset = run.config.get("preset")
    if preset:
        parts.append(str(preset))
    return " · ".join(parts)


def pipeline_text(ws, model_run: str | None = None) -> str:
    from vitsae_tui.engine.pipeline import lineage
    from vitsae_tui.engine.pipeline import next_step as pipeline_next

    states = lineage(ws, model_run)
    marks = {"done": "[green]✓[/]", "running": "[cyan]…[/]", "failed": "[red]✗[/]", "stale": "[yellow]![/]",
             "missing": "[dim]·[/]", "stopped": "[yellow]‖[/]", "interrupted": "[yellow]‖[/]"}
    parts = [f"{marks.get(s.state, '?')} {s.stage} [dim]{s.state}{' ' + s.run if s.run else ''}[/]" for s in states]
    return "[b]pipeline[/] " + " → ".join(parts) + f"\n[b]g[/] guided run: {pipeline_next(states)} on the offline default"


def next_step(runs: dict[str, list[RunInfo]], jobs_running: bool) -> str:
    if jobs_running:
        return "A job is running: t opens its live view."
    if not any(r.state == "finished" for r in runs["models"]):
        return "Next: train a vision model. Press t, then s to start the demo preset (about 2 minutes on a laptop CPU)."
    if not any(r.state == "finished" for r in runs["activations"]):
        return "A model is trained. Next: press c to collect its activations (enter on a model shows its curves)."
    if not any(r.state == "finished" for r in runs["saes"]):
        return "Activations are collected. Next: press a to train a JumpReLU SAE on them."
    if not any(r.state == "finished" for r in runs["features"]):
        return "An SAE is trained. Next: press i to build its feature index (select an SAE run first to pick another)."
    return "Features are indexed. Press b to browse them; t, c, a and i start new runs."


class HomeScreen(Screen):
    BINDINGS = [
        Binding("g", "app.guided_run", "Guided run"),
        Binding("t", "app.switch_mode('train')", "Train model"),
        Binding("c", "app.switch_mode('collect')", "Collect"),
        Binding("a", "app.switch_mode('sae')", "Train SAE"),
        Binding("i", "index", "Index SAE"),
        Binding("b", "app.switch_mode('browse')", "Browse"),
        Binding("enter", "open_run", "Open run"),
        Binding("f5", "refresh_runs", "Refresh"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="home"):
            yield Static(id="workspace")
            yield Static(id="pipeline")
            yield Static(id="next")
            yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#runs", DataTable)
        table.add_columns("kind", "run", "state", "updated", "details")
        self.refresh_runs()
        self.set_interval(2.0, self.refresh_runs)

    def on_screen_resume(self) -> None:
        self.refresh_runs()

    def action_refresh_runs(self) -> None:
        self.refresh_runs()

    def refresh_runs(self) -> None:
        ws = self.app.workspace
        runs = {kind: ws.runs(kind) for kind in KINDS}
        self.query_one("#workspace", Static).update(f"[b]workspace[/] {escape(str(ws.root))}")
        self.query_one("#pipeline", Static).update(pipeline_text(ws, self.selected_model()))
        self.query_one("#next", Static).update(next_step(runs, self.app.jobs.running()))
        table = self.query_one("#runs", DataTable)
        cursor = table.cursor_row
        table.clear()
        for kind in KINDS:
            for run in runs[kind]:
                style = STATE_STYLE.get(run.state, "")
                updated = time.strftime("%m-%d %H:%M", time.localtime(run.updated)) if run.updated else "-"
                # status files are data, not markup: a message with brackets must not restyle (or break) the table
                table.add_row(kind, run.name, Text(str(run.state), style=style or ""), updated,
                              Text(run_details(run)), key=f"{kind}/{run.name}")
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))

    def selected_model(self) -> str | None:
        """The model run under the table cursor, whose lineage the pipeline line shows."""
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            return None
        kind, name = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value.split("/", 1)
        return name if kind == "models" else None

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self.query_one("#pipeline", Static).update(pipeline_text(self.app.workspace, self.selected_model()))

    def action_index(self) -> None:
        table = self.query_one("#runs", DataTable)
        selected = None
        if table.row_count:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            kind, name = key.split("/", 1)
            selected = name if kind == "saes" else None
        self.app.action_build_index(selected)

    async def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        await self.action_open_run()  # the focused table consumes enter itself

    async def action_open_run(self) -> None:
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            self.notify("the workspace is empty: press t to train a model", severity="warning")
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        kind, name = key.split("/", 1)
        path = self.app.workspace.root / kind / name
        mode = {"models": "train", "saes": "sae", "activations": "collect", "features": "browse"}[kind]
        await self.app.switch_mode(mode)  # awaited, so a screen opened for the first time is mounted before use
        screen = self.app.screen
        if kind == "features":
            screen.query_one("#index").value = name
        elif kind == "activations":
            screen.show_set(path)
        else:
            screen.show_run(path)
