"""Collect activations: pick a model run, a hook point, a dataset and a limit; live images/s, ETA and size on disk."""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Footer, Header, Input, ProgressBar, Select, Static

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine import events, metrics, model_run
from vitsae_tui.engine.activation_set import size_on_disk
from vitsae_tui.engine.config import CollectConfig, ConfigError
from vitsae_tui.engine.errors import UserError
from vitsae_tui.engine.workspace import read_status
from vitsae_tui.formatting import format_bytes
from vitsae_tui.tui.jobs import Job
from vitsae_tui.tui.screens.stage import START_STOP_BINDINGS, StageScreen
from vitsae_tui.tui.widgets.choices import choose, refill_select
from vitsae_tui.tui.widgets.config_form import ConfigForm
from vitsae_tui.tui.widgets.stage_log import StageLog

STAGE = "collect"
FORM_FIELDS = ("model", "checkpoint", "hook", "data.dataset", "split", "limit", "dtype")


class CollectScreen(StageScreen):
    STAGE = STAGE
    BINDINGS = START_STOP_BINDINGS

    def __init__(self):
        super().__init__()
        self.set_dir = None
        self.size_checked = 0.0
        self.size_on_disk = 0

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with VerticalScroll(id="form"):
                yield ConfigForm(
                    CollectConfig,
                    FORM_FIELDS,
                    {
                        "model": (),
                        "checkpoint": (("best", "best"), ("last", "last")),
                        "hook": (),
                        "split": tuple((split, split) for split in ("train", "val", "all")),
                        "dtype": (("float16", "float16"), ("float32", "float32")),
                    },
                    id="config",
                )
                with Horizontal(id="form-buttons"):
                    yield Button("Start ^s", variant="success", id="start", compact=True)
                    yield Button("Stop ^x", variant="error", id="stop", compact=True)
            with Vertical(id="live"):
                yield Static("no job: pick a model run and press ctrl+s", id="status")
                yield ProgressBar(total=1, id="progress", show_eta=False)
                yield Static("", id="summary")
                yield StageLog(id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_models()

    def on_screen_resume(self) -> None:
        self.refresh_models()

    def refresh_models(self) -> None:
        runs = [r for r in self.app.workspace.runs("models") if model_run.checkpoint_path(r.path, "best").exists()]
        select = self.query_one("#model", Select)
        refill_select(select, [(f"{r.name} ({r.state})", r.name) for r in runs], self.app.lineage_run("models"))

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "model" and isinstance(event.value, str) and not self.form_locked:
            self.fill_hooks(str(event.value))

    def fill_form(self, config: dict) -> None:
        with self.prevent(Select.Changed):  # its handler would reset the hook to the model's default afterwards
            if choose(self.query_one("#model", Select), config.get("model")):
                self.fill_hooks(str(config["model"]))
            self.query_one("#config", ConfigForm).fill(config)

    def fill_hooks(self, run: str) -> None:
        try:
            hook_names, default_hook = model_run.hook_choices(self.app.workspace, run)
            data = model_run.model_data(self.app.workspace, run)
            dataset = data.dataset if data is not None else "synthetic"
        except (UserError, OSError) as e:  # a damaged run: say so, keep the screen usable
            self.notify(f"models/{run} cannot be read: {e}", severity="error", markup=False)
            return
        hook = default_hook
        shown_set = self.lineage_set()
        if shown_set is not None and shown_set.model_run == run:  # the lineage's own choices, not the defaults
            hook, dataset = shown_set.hook, shown_set.data.dataset
        hooks = self.query_one("#hook", Select)
        hooks.set_options([(h, h) for h in hook_names])
        choose(hooks, hook) or choose(hooks, default_hook)
        self.query_one("#dataset", Input).value = dataset

    def lineage_set(self):
        """The provenance of the shown lineage's activation set, or None."""
        from vitsae_tui.engine.activation_set import SetSummary

        name = self.app.lineage_run("activations")
        try:
            return SetSummary.load(self.app.workspace.run_dir("activations", name)).provenance if name else None
        except (UserError, OSError):
            return None

    def form_config(self) -> CollectConfig:
        if self.query_one("#model", Select).is_blank():
            raise ConfigError("pick a model run first (train one on the Train screen if the list is empty)")
        values = self.query_one("#config", ConfigForm).read(config_mod.to_dict(CollectConfig()))
        return config_mod.from_dict(CollectConfig, values)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        {"start": self.action_start, "stop": self.action_stop}[event.button.id]()

    def action_start(self) -> None:
        if self.app.jobs.running(STAGE):
            self.notify("a collection is already running; stop it first (ctrl+x)", severity="warning")
            return
        try:
            cfg = self.form_config()
        except ConfigError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        from vitsae_tui.engine.stages.collect import run as collect

        self.start_job(f"collect {cfg.hook or 'default hook'} of {cfg.model}", collect, cfg, self.app.workspace)

    def reset_view(self) -> None:
        self.set_dir, self.size_on_disk = None, 0
        self.query_one("#summary", Static).update("")

    def on_stage_event(self, job: Job, event: events.Event) -> None:
        if isinstance(event, events.Started):
            self.set_dir = Path(event.run_dir)
        elif isinstance(event, events.Finished):
            shown = (
                metrics.IMAGES,
                metrics.TOKENS,
                metrics.D_MODEL,
                metrics.DTYPE,
                metrics.SHARDS,
                metrics.BYTES_ON_DISK,
            )
            images, tokens, width, dtype, shards, size = (event.summary.get(m.key) for m in shown)
            verb = "stopped (re-run the same settings to finish)" if event.stopped else "done"
            self.query_one("#summary", Static).update(
                Text(
                    f"{verb}: {images} images · {tokens:,} tokens of {width} {dtype} · "
                    f"{shards} shard(s) · {format_bytes(size)} → {event.run_dir}",
                    style="green",
                )
            )

    def show_run(self, set_dir: Path) -> None:
        """Describe an activation set from its manifest, and keep following it while another process collects it."""
        self.watch_run(set_dir)

    def poll_watched(self) -> None:
        if self.watching is None:
            return
        from vitsae_tui.engine.activation_set import SetSummary

        set_dir = self.watching
        try:
            m = SetSummary.load(set_dir)
        except (UserError, OSError) as e:
            self.query_one("#summary", Static).update(Text(str(e), style="red"))
            return
        status = read_status(set_dir)
        owner = (
            f", written by pid {status.get('pid')} on {status.get('host')}" if status.get("state") == "running" else ""
        )
        self.query_one("#status", Static).update(
            Text(f"watching {set_dir.name}: {status.get('state', 'unknown')} (read-only{owner})")
        )
        planned = m.n_images_planned or m.n_images or 1
        self.query_one("#progress", ProgressBar).update(total=planned, progress=m.n_images)
        p = m.provenance
        state = "complete" if m.complete else f"incomplete ({m.n_images} of {m.n_images_planned or '?'} images)"
        size = size_on_disk(set_dir)
        self.query_one("#summary", Static).update(
            Text(
                f"{set_dir.name}: {state} · {m.n_images} images · {m.n_tokens:,} tokens of {m.d_model} {m.dtype} · "
                f"{format_bytes(size)}\nfrom models/{p.model_run} ({p.checkpoint}, {p.checkpoint_sha256[:12]}) "
                f"at {m.hook}, {p.data.dataset} {p.split}"
            )
        )

    def status_detail(self, job: Job) -> str:
        detail = super().status_detail(job)
        now = time.monotonic()
        if self.set_dir is not None and self.set_dir.is_dir() and now - self.size_checked > 1.0:
            self.size_checked = now
            self.size_on_disk = size_on_disk(self.set_dir)
        return f"{detail} · {format_bytes(self.size_on_disk)} on disk" if self.size_on_disk else detail
