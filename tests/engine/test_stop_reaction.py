"""Every stage sees a stop request within a second, in every phase: drawing synthetic images, the index's class
effects, causal effects and concept scoring."""

import threading
import time

import pytest

from tests.helpers import Collector, make_model_run, tiny_train_config
from vitsae_tui.engine import events
from vitsae_tui.engine.config import CollectConfig, DataConfig, IndexConfig
from vitsae_tui.engine.stages.collect import run as collect
from vitsae_tui.engine.stages.index import run as build_index
from vitsae_tui.engine.stages.train_model import run as train_model


class StopTimer(Collector):
    """Sets stop at the first event matching `when`, and remembers when."""

    def __init__(self, when):
        self.stop = threading.Event()
        self.asked_at = None
        super().__init__(self.stop, lambda e: when(e) and self._mark())

    def _mark(self) -> bool:
        if self.asked_at is None:
            self.asked_at = time.perf_counter()
        return True


def drawing(event) -> bool:
    return isinstance(event, events.Progress) and event.unit == "images drawn" and event.done > 0


def test_a_model_run_stops_within_a_second_while_its_images_are_drawn(workspace):
    cfg = tiny_train_config(data=DataConfig(n_train=4000, n_val=500))  # ~20 s of drawing on two cores
    report = StopTimer(drawing)
    result = train_model(cfg, workspace, report, report.stop)
    assert result.stopped and time.perf_counter() - report.asked_at < 1.0
    assert (result.run_dir / "status.json").read_text().count('"stopped"') == 1
    assert not report.of(events.Failed)


@pytest.mark.slow
def test_collecting_a_validation_split_stops_within_a_second_while_it_is_drawn(workspace):
    model = make_model_run(workspace, tiny_train_config(data=DataConfig(n_train=96, n_val=3000)))
    report = StopTimer(drawing)
    result = collect(CollectConfig(model=model, split="val", device="cpu"), workspace, report, report.stop)
    assert result.stopped and time.perf_counter() - report.asked_at < 1.0
    again = collect(CollectConfig(model=model, split="val", device="cpu"), workspace, Collector(), threading.Event())
    assert not again.stopped and again.run_dir == result.run_dir  # the same command then collects it


@pytest.mark.parametrize("phase", ["features (class effects)", "images (zeroing features)", "concepts scored"])
def test_every_phase_of_the_index_reports_progress_and_stops_within_a_second(tmp_path, phase):
    from tests.helpers import make_indexed_workspace

    ws, sae = make_indexed_workspace(tmp_path / "ws")
    seen = Collector()
    build_index(IndexConfig(sae=sae, device="cpu"), ws, seen, threading.Event())
    units = {e.unit for e in seen.of(events.Progress)}
    assert {"images", "features (class effects)", "images (zeroing features)", "concepts scored"} <= units

    report = StopTimer(lambda e: isinstance(e, events.Progress) and e.unit == phase)
    result = build_index(IndexConfig(sae=sae, device="cpu"), ws, report, report.stop)
    assert result.stopped and not result.summary and time.perf_counter() - report.asked_at < 1.0
    assert report.of(events.Finished)[-1].stopped
    again = Collector()
    assert build_index(IndexConfig(sae=sae, device="cpu"), ws, again, threading.Event()).summary
    assert any("continuing the index pass" in e.message for e in again.of(events.Log))
