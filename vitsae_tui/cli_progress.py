"""Rich console output while a headless stage runs: a live progress bar fed by engine events (off a terminal, plain
lines), and what other torchrun ranks print."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from vitsae_tui.engine import events, metrics
from vitsae_tui.engine.text import MAX_MESSAGE, shown
from vitsae_tui.formatting import fidelity_line, format_duration, format_metrics, stopped_verb, summary_lines


def format_eval(row: metrics.SAEEval) -> Text:
    text = Text.assemble((f"eval @ step {row.step}", "cyan"), f": FVU {row.eval_fvu:.4f}  L0 {row.eval_l0:.1f}")
    if row.spliced:
        text.append("\n  " + fidelity_line(row))
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
        self.last_printed: dict[str, tuple[int, int, str]] = {}
        self.lead_run: dict[str, str] = {}

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
        if self.last_printed.get(event.stage) == (event.done, event.total, event.unit):
            return  # a stage reports its final count twice (the loop's last step, then its end): one line says it
        self.last_printed[event.stage] = (event.done, event.total, event.unit)
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
            run = shown(getattr(event.row, "run", ""))
            if isinstance(event.row, metrics.SAEEval):
                self.progress.console.print(*([Text(f"{run}:")] if run else []), format_eval(event.row))
                return
            if self.lead_run.setdefault(event.stage, run) != run:  # a sweep's bar follows its first SAE
                return
            self.latest.setdefault(event.stage, {}).update(metrics.values(event.row))
            if self.live:
                self.progress.update(self._task(event.stage), metrics=format_metrics(self.latest[event.stage]))
        elif isinstance(event, events.Log):
            style = {"warning": "yellow", "error": "red"}.get(event.level, "dim")
            self._print(f"{time.strftime('%H:%M:%S')} {shown(event.message, MAX_MESSAGE)}", style)
        elif isinstance(event, events.Failed):
            self.progress.console.print(
                Text.assemble((f"{event.stage} failed: ", "bold red"), shown(event.message, MAX_MESSAGE))
            )
        elif isinstance(event, events.Finished):
            verb = "finished"
            if event.stopped:
                pipeline = event.stage == "pipeline"
                verb = "stopped (run it again to go on)" if pipeline else stopped_verb(event.summary, "--resume")
            self.progress.console.print(
                Text.assemble((f"{event.stage} {verb}", "bold green"), f" → {shown(event.run_dir)}")
            )
            for line in summary_lines(event.summary):
                self._print(f"  {shown(line)}")


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
            self.console.print(
                Text.assemble(
                    (f"{event.stage} failed on rank {self.rank}: ", "bold red"), shown(event.message, MAX_MESSAGE)
                )
            )
