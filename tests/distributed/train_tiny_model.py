"""Run under torchrun by the tests: model training from a config file (the CLI has no flags for a tiny model),
through the same stage runner as `vitsae-tui train-model`."""

import json
import sys

import torch

from vitsae_tui.cli import _run_stage
from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.config import TrainModelConfig
from vitsae_tui.engine.stages.train_model import run as train_model
from vitsae_tui.engine.workspace import Workspace

if __name__ == "__main__":
    workspace, config_path = sys.argv[1], sys.argv[2]
    torch.set_default_dtype(torch.float64)  # float32 noise, amplified by Adam, would hide real differences
    cfg = config_mod.from_dict(TrainModelConfig, json.loads(open(config_path).read()))
    sys.exit(_run_stage(train_model, cfg, Workspace(workspace)))
