"""Build feature index: pick an SAE; the streaming pass, the class and causal effects and the concept scoring each
show a bar with ETA, then b opens the browser on the new index."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Footer, Header, ProgressBar, Select, Static

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine import events
from vitsae_tui.engine.config import ConfigError, IndexConfig
from vitsae_tui.tui.jobs import Job
from vitsae_tui.tui.screens.stage import DEVICES, START_STOP_BINDINGS, StageScreen
from vitsae_tui.tui.widgets.choices import refill_select
from vitsae_tui.tui.widgets.config_form import ConfigForm
from vitsae_tui.tui.widgets.stage_log import StageLog

STAGE = "index"
FORM_FIELDS = ("sae", "device")
PHASES = dict(
    [
        ("images", "pass over the set"),  # (the unit of the phase's progress, what the screen calls the phase)
        ("features (class effects)", "class effects"),
        ("images (zeroing features)", "causal effects"),
        ("concepts scored", "concept scoring"),
    ]
)
"""what each progress unit of the index stage is, as the status line names it"""


class IndexScreen(StageScreen):
    STAGE = STAGE
    BINDINGS = [*START_STOP_BINDINGS, Binding("b", "browse", "Browse")]

    def __init__(self):
        super().__init__()
        self.built: str | None = None
        """the index this screen saw finish, which b opens"""

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with VerticalScroll(id="form"):
                yield ConfigForm(IndexConfig, FORM_FIELDS, {"sae": (), "device": DEVICES}, id="config")
                with Horizontal(id="form-buttons"):
                    yield Button("Start ^s", variant="success", id="start", compact=True)
                    yield Button("Stop ^x", variant="error", id="stop", compact=True)
            with Vertical(id="live"):
                yield Static("no job: pick an SAE and press ctrl+s", id="status")
                yield ProgressBar(total=1, id="progress", show_eta=False)
                yield Static("", id="summary")
                yield StageLog(id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_saes()

    def on_screen_resume(self) -> None:
        self.refresh_saes()

    def refresh_saes(self) -> None:
        saes = [r for r in self.app.workspace.runs("saes") if r.state == "finished"]
        refill_select(self.query_one("#sae", Select), [(r.name, r.name) for r in saes], self.app.lineage_run("saes"))

    def fill_form(self, config: dict) -> None:
        self.query_one("#config", ConfigForm).fill(config)

    def form_config(self) -> IndexConfig:
        if self.query_one("#sae", Select).is_blank():
            raise ConfigError("pick an SAE first (train one on the Train SAE screen if the list is empty)")
        values = self.query_one("#config", ConfigForm).read(config_mod.to_dict(IndexConfig()))
        return config_mod.from_dict(IndexConfig, values)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        {"start": self.action_start, "stop": self.action_stop}[event.button.id]()

    def job_title(self, cfg: IndexConfig) -> str:
        return f"index {cfg.sae}"

    def action_start(self) -> None:
        self.start_from_form()

    def status_detail(self, job: Job) -> str:
        p = job.progress_by_stage.get(STAGE)
        phase = PHASES.get(p.unit, p.unit) if p is not None else ""
        return f"{phase}: {super().status_detail(job)}" if phase else super().status_detail(job)

    def reset_view(self) -> None:
        self.built = None
        self.query_one("#summary", Static).update("")

    def on_stage_event(self, job: Job, event: events.Event) -> None:
        if isinstance(event, events.Finished) and not event.stopped:
            self.built = Path(event.run_dir).name
            s = event.summary
            concepts = f" · {s['matched']} of {s['concepts']} concepts matched" if s.get("concepts") else ""
            self.query_one("#summary", Static).update(
                Text(
                    f"done: {s.get('alive', '?')} of {s.get('features', '?')} features fire{concepts} → "
                    f"{event.run_dir}\nb opens the browser on it",
                    style="green",
                )
            )
        elif isinstance(event, events.Finished):
            self.query_one("#summary", Static).update(
                Text("stopped: the pass is saved; start again to continue it", style="yellow")
            )

    async def action_browse(self) -> None:
        if self.built is None:
            self.notify("no index built here yet: start one (ctrl+s), or press b on home", severity="warning")
            return
        await self.app.open_run("features", self.built)
