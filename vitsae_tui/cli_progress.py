"""Rich console output for headless stages: a live progress bar fed by engine events, and run listings."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from vitsae_tui.engine import events
from vitsae_tui.engine.workspace import KINDS, Workspace

METRIC_FORMATS = {
    "mse": ("MSE", "{:.4g}"),
    "fvu": ("FVU", "{:.4f}"),
    "l0": ("L0", "{:.1f}"),
    "dead_fraction": ("dead", "{:.1%}"),
    "tokens_per_s": ("tok/s", "{:,.0f}"),
    "train_loss": ("loss", "{:.4f}"),
    "train_accuracy": ("acc", "{:.1%}"),
    "val_loss": ("val loss", "{:.4f}"),
    "val_accuracy": ("val acc", "{:.1%}"),
}


def format_metrics(row: dict, formats: dict = METRIC_FORMATS) -> str:
    parts = []
    for key, (label, fmt) in formats.items():
        if isinstance(row.get(key), (int, float)):
            parts.append(f"{label} {fmt.format(row[key])}")
    return "  ".join(parts)


def format_eval(row: dict) -> str:
    text = f"[cyan]eval @ step {row['step']}[/]: FVU {row.get('eval_fvu', float('nan')):.4f}  L0 {row.get('eval_l0', float('nan')):.1f}"
    if "ce_recovered" in row:
        text += (f"  CE recovered {row['ce_recovered']:.3f} (clean {row['ce_clean']:.3f}, SAE {row['ce_sae']:.3f}, "
                 f"mean-ablated {row['ce_ablated']:.3f})  acc {row['acc_sae']:.1%} vs clean {row['acc_clean']:.1%}")
    return text


class ConsoleReport:
    """A `report` callable that draws one progress bar per stage and prints logs, results and errors."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=self.console,
        )
        self.tasks: dict[str, int] = {}
        self.latest: dict[str, dict] = {}

    def __enter__(self) -> ConsoleReport:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def _task(self, stage: str) -> int:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=None, unit="", metrics="")
        return self.tasks[stage]

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.Progress):
            self.progress.update(self._task(event.stage), completed=event.done, total=event.total or None, unit=event.unit)
        elif isinstance(event, events.Metrics):
            if event.row.get("kind") == "eval":
                self.progress.console.print(format_eval(event.row))
                return
            self.latest.setdefault(event.stage, {}).update(event.row)
            self.progress.update(self._task(event.stage), metrics=format_metrics(self.latest[event.stage]))
        elif isinstance(event, events.Log):
            style = {"warning": "yellow", "error": "red"}.get(event.level, "dim")
            self.progress.console.print(f"[{style}]{time.strftime('%H:%M:%S')} {event.message}[/]")
        elif isinstance(event, events.Failed):
            self.progress.console.print(f"[bold red]{event.stage} failed:[/] {event.message}")
        elif isinstance(event, events.Finished):
            verb = "stopped (checkpoint saved; resume with --resume)" if event.stopped else "finished"
            self.progress.console.print(f"[bold green]{event.stage} {verb}[/] → {event.run_dir}")
            for key, value in event.summary.items():
                shown = f"{value:.4g}" if isinstance(value, float) else value
                self.progress.console.print(f"  {key}: {shown}")


def print_runs(ws: Workspace, console: Console | None = None) -> None:
    console = console or Console()
    console.print(f"workspace: {ws.root}")
    for kind in KINDS:
        runs = ws.runs(kind)
        if not runs:
            continue
        table = Table(title=kind, title_justify="left", show_edge=False)
        table.add_column("run", no_wrap=True, min_width=max(len(r.name) for r in runs))
        table.add_column("state")
        table.add_column("updated")
        table.add_column("details")
        for run in runs:
            details = {k: v for k, v in run.status.items()
                       if k.startswith("best_") or k in ("images", "tokens", "d_model", "dtype", "fvu", "l0", "ce_recovered")
                       or (k == "message" and v)}
            table.add_row(run.name, run.state, time.strftime("%Y-%m-%d %H:%M", time.localtime(run.updated)),
                          "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in details.items()))
        console.print(table)
    if not any(ws.runs(kind) for kind in KINDS):
        console.print("no runs yet: `vitsae-tui train-model` starts one, or open the app with `vitsae-tui`")
