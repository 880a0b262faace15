"""Rich console output for headless stages: a live progress bar fed by engine events, and run listings."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
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
            self.progress.console.print(f"[{style}]{time.strftime('%H:%M:%S')} {escape(event.message)}[/]")
        elif isinstance(event, events.Failed):
            self.progress.console.print(f"[bold red]{event.stage} failed:[/] {escape(event.message)}")
        elif isinstance(event, events.Finished):
            verb = "stopped (checkpoint saved; resume with --resume)" if event.stopped else "finished"
            self.progress.console.print(f"[bold green]{event.stage} {verb}[/] → {escape(event.run_dir)}")
            for key, value in event.summary.items():
                shown = f"{value:.4g}" if isinstance(value, float) else value
                self.progress.console.print(f"  {key}: {escape(str(shown))}")


class RankReport:
    """What a torchrun rank other than 0 prints: only its failures, named by rank (rank 0 reports the run)."""

    def __init__(self, rank: int, console: Console | None = None):
        self.rank = rank
        self.console = console or Console(stderr=True, soft_wrap=True)

    def __enter__(self) -> RankReport:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.Failed):
            self.console.print(f"[bold red]{event.stage} failed on rank {self.rank}:[/] {escape(event.message)}")


def print_runs(ws: Workspace, console: Console | None = None) -> None:
    console = console or Console()
    console.print(f"workspace: {escape(str(ws.root))}")
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


def print_image_features(index, image: int, token: int | None, top: int, console: Console | None = None) -> None:
    """The reference's inference output, for every patch: top features with activation, density and label."""
    console = console or Console()
    if not 0 <= image < index.store.n_images:
        raise IndexError(f"image {image} is outside 0..{index.store.n_images - 1}")
    T = index.store.tokens_per_image
    if token is not None and not 0 <= token < T:
        raise IndexError(f"token {token} is outside 0..{T - 1}")
    entry = index.store.manifest["images"][image]
    label = index.store.class_names[entry["label"]] if 0 <= entry["label"] < len(index.store.class_names) else "unlabelled"
    table = Table(title=f"image {image} ({label}, {entry['source']}) · top {top} features per patch", title_justify="left")
    table.add_column("patch", justify="right")
    table.add_column("row,col")
    table.add_column("features (id: activation, density, label)")
    grid = index.store.manifest["grid"][1]
    for t in ([token] if token is not None else range(T)):
        cells = [f"{j}: {v:.3g} ({index.arrays['density'][j]:.1e})" + (f" {index.label(j)}" if index.label(j) else "")
                 for j, v in index.top_features(image, t, top)]
        table.add_row(str(t), f"{t // grid},{t % grid}", "  ".join(cells) or "(no feature fires)")
    console.print(table)


def print_feature(index, feature: int, console: Console | None = None) -> None:
    console = console or Console()
    if not 0 <= feature < index.d_sae:
        raise IndexError(f"feature {feature} is outside 0..{index.d_sae - 1}")
    a = index.arrays
    label = index.label(feature)
    console.print(f"[b]feature {feature}[/]" + (f" — {label}" if label else ""))
    console.print(f"density {a['density'][feature]:.3e} · max {a['max_activation'][feature]:.4g} · mean {a['mean_activation'][feature]:.4g}")
    promoted, suppressed = index.class_effect(feature)
    console.print("class effect: promotes " + ", ".join(f"{n} {v:+.3f}" for n, v in promoted)
                  + " · suppresses " + ", ".join(f"{n} {v:+.3f}" for n, v in suppressed))
    distribution = index.class_distribution(feature)[:5]
    if distribution:
        console.print("fires on: " + ", ".join(f"{n} {p:.0%}" for n, p in distribution))
    for c in index.matched_concepts.get(feature, []):
        console.print(f"best feature for {c['concept']}: AUROC {c['feature_auroc']:.3f} (best neuron {c['neuron_auroc']:.3f}, "
                      f"probe {c['probe_auroc']:.3f}), top-{index.meta['top_k']} precision {c['top_precision']:.0%}")
    table = Table(title="top examples", title_justify="left")
    for column in ("rank", "image", "patch", "activation", "class"):
        table.add_column(column, justify="right" if column != "class" else "left")
    names = index.store.class_names
    for rank, (image, token, value) in enumerate(index.top_examples(feature)[:16], 1):
        lab = index.store.manifest["images"][image]["label"]
        table.add_row(str(rank), str(image), str(token), f"{value:.4g}", names[lab] if 0 <= lab < len(names) else "-")
    console.print(table)
    bands = index.band_examples(feature)
    for b, examples in enumerate(bands):
        if examples:
            console.print(f"band {b + 1} of {len(bands)}: " + ", ".join(f"img {i}/p{t} {v:.3g}" for i, t, v in examples))
