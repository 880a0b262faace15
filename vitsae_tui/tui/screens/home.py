"""Home: the workspace at a glance (runs and their state, newest first), the chosen lineage, and what to do next."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Static
from textual.worker import get_current_worker

from vitsae_tui.engine.events import Failed, Finished, Plan, Progress, Started
from vitsae_tui.engine.pipeline import StageState, lineage, next_step
from vitsae_tui.engine.run_details import describe_run
from vitsae_tui.engine.stages import REGISTRY
from vitsae_tui.engine.text import shown
from vitsae_tui.engine.workspace import KINDS, RunInfo, Workspace
from vitsae_tui.formatting import format_duration
from vitsae_tui.tui.jobs import Job
from vitsae_tui.tui.screens.base import AppScreen

STATE_STYLE = {
    "finished": "green",
    "running": "cyan",
    "failed": "red",
    "stopped": "yellow",
    "interrupted": "yellow",
    "damaged": "red",
}
MARKS = {
    "done": ("✓", "green"),
    "running": ("…", "cyan"),
    "failed": ("✗", "red"),
    "stale": ("!", "yellow"),
    "missing": ("·", "dim"),
    "stopped": ("‖", "yellow"),
    "interrupted": ("‖", "yellow"),
}
KIND_NAMES = {"models": "model", "activations": "activation set", "saes": "SAE", "features": "index"}
DETAILS_WIDTH = 120
"""from this many columns up the runs table has a details column"""
# the key that builds each stage by hand
STAGE_KEYS = {"train-model": "t", "collect": "c", "train-sae": "a", "index": "i"}
GUIDED_RUN = (
    "g runs the whole pipeline on the built-in offline data: it trains the demo model, collects its "
    "activations, trains a JumpReLU SAE and indexes its features, then opens the browser"
)


def pipeline_text(
    states: list[StageState], selected: tuple[str, str] | None, live: dict[str, Progress] | None = None
) -> Text:
    """The lineage's stages; a stage this app is building shows its progress and ETA (an index has no folder until it
    is written, so the files alone would say 'missing')."""
    text = Text.assemble(("pipeline", "bold"), " ")
    for i, s in enumerate(states):
        progress = (live or {}).get(s.stage)
        state = "running" if progress is not None else s.state
        mark, style = MARKS.get(state, ("?", ""))
        detail = f" {s.run}" if s.run else ""
        if progress is not None:
            share = f" {progress.done / progress.total:.0%}" if progress.total else ""
            detail = f"{share} ETA {format_duration(progress.eta_s)}"
        text.append_text(
            Text.assemble(
                " → " if i else "",
                (mark, style),
                f" {REGISTRY[s.stage].noun} ",
                (state, "dim" if progress is None else "cyan"),
                (detail, "dim"),
            )
        )
    if selected is not None:
        text.append(f"\nfollowing the selected {KIND_NAMES.get(selected[0], selected[0])} {selected[1]}", style="dim")
    return text


GUIDED_RUN_TIME = {"demo": "about 3 minutes on two CPU cores", "tiny": "--demo-size tiny: about 20 s, a smoke test"}


def next_text(states: list[StageState], job: Job | None, size: str = "demo") -> Text:
    if job is not None:
        where = job.plan_line() or (
            f"{job.active_stage or job.stage}: {job.progress.done:,}/{job.progress.total:,} {job.progress.unit}"
            if job.progress is not None
            else "starting…"
        )
        keys = ", ".join(STAGE_KEYS[stage] for stage in STAGE_KEYS)
        return Text.assemble(
            (f"{job.title}", "bold"),
            f": {where}. Each stage's screen shows it live ({keys}); q asks before stopping it with a checkpoint.",
        )
    if all(s.state == "missing" for s in states):
        return Text.assemble(("New here? Press g. ", "bold"), GUIDED_RUN, f" ({GUIDED_RUN_TIME[size]}).")
    step = next_step(states)
    if step == "browse the features":
        return Text(
            "Features are indexed: b browses them, v compares every SAE of a set. g, t, c, a and i build new runs; "
            "enter opens the selected one."
        )
    first_open = next(s for s in states if s.state != "done")
    return Text.assemble(
        ("Next: ", "bold"),
        f"{step} — g does it (and every stage after it), or {STAGE_KEYS[first_open.stage]} opens that stage's screen.",
    )


def when(timestamp: float, now: float | None = None) -> str:
    """A short time that is never cut: '14:05' today, 'Dec 01' this year, '2025-12-01' before."""
    moment, today = time.localtime(timestamp), time.localtime(now)
    if moment[:3] == today[:3]:
        return time.strftime("%H:%M", moment)
    return time.strftime("%b %d" if moment.tm_year == today.tm_year else "%Y-%m-%d", moment)


class RunRow(NamedTuple):
    """One row of home's table of runs."""

    kind: str
    name: str
    state: str
    updated: str
    details: str


@dataclass(frozen=True)
class Listing:
    """What a scan of the workspace found: the runs by kind, the lineage through `selected`, a table row per run."""

    runs: dict[str, list[RunInfo]]
    states: list[StageState]
    rows: tuple[RunRow, ...]
    selected: tuple[str, str] | None


def list_workspace(ws: Workspace, selected: tuple[str, str] | None) -> Listing:
    """The workspace's listing (small files only, cached)."""
    runs = {kind: ws.runs(kind) for kind in KINDS}
    rows = tuple(
        RunRow(kind, run.name, str(run.state), when(run.updated) if run.updated else "-", describe_run(run))
        for kind in KINDS
        for run in runs[kind]
    )
    return Listing(runs, lineage(ws, selected, runs), rows, selected)


class HomeScreen(AppScreen):
    class Scanned(Message):
        """A workspace scan finished (posted by the scanning thread)."""

        def __init__(self, listing: Listing):
            super().__init__()
            self.listing = listing

    BINDINGS = [
        Binding("g", "app.guided_run", "Guided"),
        Binding("t", "app.switch_mode('train-model')", "Train"),
        Binding("m", "app.switch_mode('import-model')", "Import", show=False),
        Binding("c", "app.switch_mode('collect')", "Collect"),
        Binding("a", "app.switch_mode('train-sae')", "SAE"),
        Binding("i", "index", "Index"),
        Binding("b", "app.switch_mode('browse')", "Browse"),
        Binding("v", "app.switch_mode('compare')", "Compare"),
        Binding("enter", "open_run", "Open"),
        Binding("f5", "refresh_runs", "Refresh", show=False),
    ]

    def __init__(self):
        super().__init__()
        self.settled_key: str | None = None
        """the row under the cursor after our own refresh: a highlight of another row is the user's choice"""
        self.runs: dict[str, list[RunInfo]] = {}
        """the workspace as last listed (every 2 s): cursor moves redraw from it instead of scanning the disk"""
        self.rows_shown: tuple = ()
        self.with_details = True
        self.scans = 0
        """how many listings have been shown (tests wait on it)"""
        self.states: list[StageState] | None = None
        """the lineage as last shown"""

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="home"):
            yield Static(id="workspace")
            yield Static(id="pipeline")
            yield Static(id="next")
            yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
            yield Static(id="run-detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.set_columns()
        self.query_one("#workspace", Static).update(
            Text.assemble(("workspace ", "bold"), shown(self.app.workspace.root))
        )
        self.refresh_runs()
        self.set_interval(2.0, self.refresh_runs)
        self.app.jobs.subscribe(self.on_job_events)

    def on_unmount(self) -> None:
        self.app.jobs.unsubscribe(self.on_job_events)

    def set_columns(self) -> None:
        """The short columns first; the details column only where it fits whole (the line under the table always
        shows the selected run's details): a cut detail was a number cut mid-way."""
        table = self.query_one("#runs", DataTable)
        self.with_details = self.size.width >= DETAILS_WIDTH or self.size.width == 0
        table.clear(columns=True)
        table.add_columns("kind", "state", "updated", "run", *(["details"] if self.with_details else []))
        self.rows_shown = ()

    def on_resize(self) -> None:
        if (self.size.width >= DETAILS_WIDTH) != self.with_details:
            self.set_columns()
            self.refresh_runs()

    def on_screen_resume(self) -> None:
        self.refresh_runs()

    def action_refresh_runs(self) -> None:
        self.refresh_runs()

    def refresh_runs(self) -> None:
        self.scan_workspace(self.app.workspace, self.app.lineage_selection)

    @work(thread=True, exclusive=True, group="home-scan")
    def scan_workspace(self, ws: Workspace, selected: tuple[str, str] | None) -> None:
        """List the runs and their lineage off the UI thread: a large or slow workspace never freezes the app."""
        try:
            listing = list_workspace(ws, selected)
        except OSError:  # a run deleted or rewritten while being listed: the next refresh sees it settled
            return
        if not get_current_worker().is_cancelled:
            self.post_message(self.Scanned(listing))

    def on_home_screen_scanned(self, message: Scanned) -> None:
        self.show_scan(message.listing)

    def show_scan(self, listing: Listing) -> None:
        if not self.is_attached or not self.query("#pipeline"):  # the app closed while the scan ran
            return
        self.runs = listing.runs
        self.scans += 1
        if listing.selected == self.app.lineage_selection:  # else the user moved on: that lineage is already shown
            self.show_states(listing.states)
        rows = listing.rows
        if rows == self.rows_shown:  # nothing changed on disk: keep the table (and its cursor) as it is
            return
        self.rows_shown = rows
        table = self.query_one("#runs", DataTable)
        selected = self.app.lineage_selection
        table.clear()
        for kind, name, state, updated, details in rows:
            # status files are data, not markup: a message with brackets must not restyle (or break) the table
            table.add_row(
                kind,
                Text(state, style=STATE_STYLE.get(state, "")),
                updated,
                Text(name),
                *([Text(details)] if self.with_details else []),
                key=f"{kind}/{name}",
            )
        if selected is not None and f"{selected[0]}/{selected[1]}" in table.rows:
            table.move_cursor(row=table.get_row_index(f"{selected[0]}/{selected[1]}"))
        cursor = self.cursor_run()
        self.settled_key = f"{cursor[0]}/{cursor[1]}" if cursor else None
        self.show_run_detail()

    def show_run_detail(self) -> None:
        """The whole detail line of the run under the cursor (the table's last column is cut on narrow terminals)."""
        cursor = self.cursor_run()
        detail = self.query_one("#run-detail", Static)
        if cursor is None:
            detail.update("")
            return
        run = next((r for r in self.runs.get(cursor[0], []) if r.name == cursor[1]), None)
        if run is not None:
            detail.update(
                Text.assemble((f"{run.kind}/{run.name}", "bold"), f" {run.state}: ", describe_run(run) or "-")
            )

    def show_lineage(self) -> None:
        self.show_states(lineage(self.app.workspace, self.app.lineage_selection, self.runs or None))

    def show_states(self, states: list[StageState]) -> None:
        self.states = states
        job = next((j for j in self.app.jobs.jobs.values() if j.running), None)
        live = {
            j.active_stage: j.progress_by_stage[j.active_stage]
            for j in self.app.jobs.jobs.values()
            if j.running and j.active_stage in j.progress_by_stage
        }
        self.query_one("#pipeline", Static).update(pipeline_text(states, self.app.lineage_selection, live))
        self.query_one("#next", Static).update(next_text(states, job, self.app.demo_size))

    def on_job_events(self, job: Job, batch: list) -> None:
        """Within a tenth of a second of any job's events: its progress here, and the runs again when one starts or
        ends (its folder appears or changes state)."""
        if self.states is not None:
            self.show_states(self.states)
        if any(isinstance(e, (Started, Finished, Failed, Plan)) for e in batch):
            self.refresh_runs()

    def cursor_run(self) -> tuple[str, str] | None:
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            return None
        kind, name = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value.split("/", 1)
        return kind, name

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value
        if key is None or key == self.settled_key or key not in event.data_table.rows:
            return
        self.call_later(self.show_run_detail)
        self.settled_key = key  # the user moved the cursor: follow that run's lineage
        kind, name = key.split("/", 1)
        self.app.lineage_selection = (kind, name)
        self.show_lineage()

    def action_index(self) -> None:
        self.app.action_build_index()

    async def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        await self.action_open_run()  # the focused table consumes enter itself

    async def action_open_run(self) -> None:
        selected = self.cursor_run()
        if selected is None:
            self.notify("the workspace is empty: press g for the guided run", severity="warning")
            return
        kind, name = selected
        self.app.lineage_selection = selected
        await self.app.open_run(kind, name)
