import dataclasses

import pytest

from vitsae_tui.engine.config import DataConfig, ModelConfig, TrainModelConfig
from vitsae_tui.engine.workspace import Workspace

TINY_MODEL = ModelConfig(conv_channels=(8, 16, 16, 16, 16), n_layer=2, n_head=2, dropout=0.1)


def tiny_train_config(**overrides) -> TrainModelConfig:
    base = TrainModelConfig(
        preset="demo",
        data=DataConfig(n_train=96, n_val=32),
        model=TINY_MODEL,
        epochs=2,
        batch_size=16,
        lr=3e-3,
        checkpoint_every=1000,
        device="cpu",
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


class Collector:
    """A report callable that keeps every event, optionally setting `stop` after some condition."""

    def __init__(self, stop=None, stop_when=None):
        self.events = []
        self.stop, self.stop_when = stop, stop_when

    def __call__(self, event):
        self.events.append(event)
        if self.stop is not None and self.stop_when is not None and self.stop_when(event):
            self.stop.set()

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]
