"""The small immutable events every stage emits through its `report` callable."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitsae_tui.engine.metrics import Row


@dataclass(frozen=True)
class Progress:
    stage: str
    done: int
    """units finished so far"""
    total: int
    """units in the whole stage (0 when unknown)"""
    unit: str = "steps"
    elapsed_s: float = 0.0
    """seconds since the stage (or its resumed part) started"""
    rate: float = 0.0
    """units per second over the recent past"""

    @property
    def eta_s(self) -> float | None:
        if self.rate <= 0 or self.total <= 0:
            return None
        return max(self.total - self.done, 0) / self.rate


@dataclass(frozen=True)
class Started:
    stage: str
    run_dir: str
    """the run folder this stage now writes (a new one, or the one it resumes)"""
    config: dict[str, Any]
    """the stage's full configuration, as saved in the run's config.json"""
    resumed: bool = False
    """True when the run continues from a checkpoint (its earlier metrics are in its metrics.jsonl)"""


@dataclass(frozen=True)
class Metrics:
    stage: str
    row: Row
    """one typed row of metrics.jsonl (see `metrics`): a training window, a validation epoch or an evaluation"""


@dataclass(frozen=True)
class Log:
    stage: str
    message: str
    level: str = "info"
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ArtifactWritten:
    stage: str
    path: str
    what: str


@dataclass(frozen=True)
class Finished:
    stage: str
    run_dir: str
    summary: dict[str, Any]
    stopped: bool = False
    """True when the stage ended early on request (a checkpoint was saved)"""


@dataclass(frozen=True)
class Failed:
    stage: str
    message: str
    run_dir: str = ""


@dataclass(frozen=True)
class Plan:
    """What a guided run will build, in order, and the step it is at (reported as each step begins)."""

    stage: str
    steps: tuple[str, ...]
    """the steps to run, e.g. ('train model', 'collect', 'collect validation', 'train SAE', 'index')"""
    current: int
    """the step running now (0-based); len(steps) once every step is done"""
    estimates_s: tuple[float, ...] = ()
    """the expected seconds of each step on a two-core CPU (empty when unknown: another dataset or size)"""


Event = Progress | Started | Metrics | Log | ArtifactWritten | Finished | Failed | Plan
Report = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """A report that discards events."""


class RateMeter:
    """Units per second over a sliding window, for progress rates and ETAs."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self.points: list[tuple[float, int]] = []
        self.start = time.perf_counter()

    def update(self, done: int) -> float:
        now = time.perf_counter()
        self.points.append((now, done))
        while len(self.points) > 2 and now - self.points[0][0] > self.window_s:
            self.points.pop(0)
        (t0, d0), (t1, d1) = self.points[0], self.points[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start


def progress_callback(report: Report, stage: str, unit: str) -> Callable[[int, int], None]:
    """A (done, total) callable that reports a stage's Progress with a rate, for sub-steps such as drawing data."""
    meter = RateMeter()

    def update(done: int, total: int) -> None:
        report(Progress(stage, done, total, unit, meter.elapsed_s, meter.update(done)))

    return update
