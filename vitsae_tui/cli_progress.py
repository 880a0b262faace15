"""Rich console output for headless stages: a live progress bar fed by engine events, and run listings."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from vitsae_tui.engine import events
from vitsae_tui.engine.run_details import describe_run
from vitsae_tui.engine.workspace import KINDS, Workspace
from vitsae_tui.formatting import format_duration, format_metrics


def format_eval(row: dict) -> str:
    text = f"[cyan]eval @ step {row['step']}[/]: FVU {row.get('eval_fvu', float('nan')):.4f}  L0 {row.get('eval_l0', float('nan')):.1f}"
    if "ce_recovered" in row:
        text += (
            f"  CE recovered {row['ce_recovered']:.3f} (clean {row['ce_clean']:.3f}, SAE {row['ce_sae']:.3f}, "
            f"mean-ablated {row['ce_ablated']:.3f})  acc {row['acc_sae']:.1%} vs clean {row['acc_clean']:.1%}"
        )
    return text


class StageProgress(Progress):
    """Rich's progress board with each stage's latest metrics on a line of its own (a long metrics column would
    squeeze the bar, the counts and the ETA into ellipses)."""

    def get_renderables(self):
        for task in self.tasks:
            yield self.make_tasks_table([task])
            if task.fields.get("metrics"):
                yield Text("  " + task.fields["metrics"], style="dim", no_wrap=True, overflow="ellipsis")


class ConsoleReport:
    """A `report` callable for the CLI: a live progress board on a terminal; on a pipe or in a log file, plain
    progress lines (at most one per stage every PLAIN_INTERVAL_S, and one at the end) instead of a board."""

    PLAIN_INTERVAL_S = 30.0

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.live = self.console.is_terminal
        self.progress = StageProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.live,
        )
        self.tasks: dict[str, int] = {}
        self.latest: dict[str, dict] = {}
        self.printed_at: dict[str, float] = {}

    def __enter__(self) -> ConsoleReport:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def _task(self, stage: str) -> int:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=None, unit="", metrics="")
        return self.tasks[stage]

    def _print(self, text: str, style: str = "") -> None:
        self.progress.console.print(Text(text, style=style))

    def _plain_progress(self, event: events.Progress) -> None:
        now = time.monotonic()
        finished = event.total and event.done >= event.total
        if not finished and now - self.printed_at.get(event.stage, -1e9) < self.PLAIN_INTERVAL_S:
            return
        self.printed_at[event.stage] = now
        eta = f" · ETA {format_duration(event.eta_s)}" if event.eta_s is not None else ""
        metrics = format_metrics(self.latest.get(event.stage, {}))
        self._print(
            f"{time.strftime('%H:%M:%S')} {event.stage} {event.done:,}/{event.total:,} {event.unit}{eta}"
            + (f" · {metrics}" if metrics else "")
        )

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.Progress):
            if self.live:
                self.progress.update(
                    self._task(event.stage), completed=event.done, total=event.total or None, unit=event.unit
                )
            else:
                self._plain_progress(event)
        elif isinstance(event, events.Metrics):
            if event.row.get("kind") == "eval":
                self.progress.console.print(format_eval(event.row))
                return
            self.latest.setdefault(event.stage, {}).update(event.row)
            if self.live:
                self.progress.update(self._task(event.stage), metrics=format_metrics(self.latest[event.stage]))
        elif isinstance(event, events.Log):
            style = {"warning": "yellow", "error": "red"}.get(event.level, "dim")
            self._print(f"{time.strftime('%H:%M:%S')} {event.message}", style)
        elif isinstance(event, events.Failed):
            self.progress.console.print(Text.assemble((f"{event.stage} failed: ", "bold red"), event.message))
        elif isinstance(event, events.Finished):
            verb = "stopped (checkpoint saved; resume with --resume)" if event.stopped else "finished"
            self.progress.console.print(Text.assemble((f"{event.stage} {verb}", "bold green"), f" → {event.run_dir}"))
            for key, value in event.summary.items():
                shown = f"{value:.4g}" if isinstance(value, float) else value
                self._print(f"  {key}: {shown}")


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
    """Every run by kind, newest first: name, state and time on one line, its details on the next (never cut)."""
    console = console or Console()
    console.print(Text(f"workspace: {ws.root}"))
    for kind in KINDS:
        runs = ws.runs(kind)
        if not runs:
            continue
        console.print(Text(kind, style="bold"))
        width = max(len(r.name) for r in runs)
        for run in runs:
            updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.updated)) if run.updated else "-"
            console.print(Text(f"  {run.name:<{width}}  {run.state:<11} {updated}"))
            details = describe_run(run)
            if details:
                console.print(Text(f"      {details}", style="dim"))
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
    label = (
        index.store.class_names[entry["label"]] if 0 <= entry["label"] < len(index.store.class_names) else "unlabelled"
    )
    table = Table(
        title=f"image {image} ({label}, {entry['source']}) · top {top} features per patch", title_justify="left"
    )
    table.add_column("patch", justify="right")
    table.add_column("row,col")
    table.add_column("features (id: activation, density, label)")
    grid = index.store.manifest["grid"][1]
    for t in [token] if token is not None else range(T):
        cells = [
            f"{j}: {v:.3g} ({index.arrays['density'][j]:.1e})" + (f" {index.label(j)}" if index.label(j) else "")
            for j, v in index.top_features(image, t, top)
        ]
        table.add_row(str(t), f"{t // grid},{t % grid}", "  ".join(cells) or "(no feature fires)")
    console.print(table)


def print_feature(index, feature: int, console: Console | None = None) -> None:
    console = console or Console()
    if not 0 <= feature < index.d_sae:
        raise IndexError(f"feature {feature} is outside 0..{index.d_sae - 1}")
    a = index.arrays
    label = index.label(feature)
    console.print(f"[b]feature {feature}[/]" + (f" — {label}" if label else ""))
    console.print(
        f"density {a['density'][feature]:.3e} · max {a['max_activation'][feature]:.4g} · mean {a['mean_activation'][feature]:.4g}"
    )
    promoted, suppressed = index.class_effect(feature)
    console.print(
        "class effect: promotes "
        + ", ".join(f"{n} {v:+.3f}" for n, v in promoted)
        + " · suppresses "
        + ", ".join(f"{n} {v:+.3f}" for n, v in suppressed)
    )
    distribution = index.class_distribution(feature)[:5]
    if distribution:
        console.print("fires on: " + ", ".join(f"{n} {p:.0%}" for n, p in distribution))
    for c in index.matched_concepts.get(feature, []):
        console.print(
            f"best feature for {c['concept']}: AUROC {c['feature_auroc']:.3f} (best neuron {c['neuron_auroc']:.3f}, "
            f"probe {c['probe_auroc']:.3f}), top-{index.meta['top_k']} precision {c['top_precision']:.0%}"
        )
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
            console.print(
                f"band {b + 1} of {len(bands)}: " + ", ".join(f"img {i}/p{t} {v:.3g}" for i, t, v in examples)
            )
