"""Sweeps: SAEs trained together in one pass over an activation set, recorded as `sweeps/<name>.json`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.config import SWEPT_FIELDS, SAETrainConfig
from vitsae_tui.engine.errors import StageError
from vitsae_tui.engine.workspace import RUN_NAME, Workspace, WorkspaceError, atomic_write_json, read_json

FOLDER = "sweeps"


@dataclass(frozen=True)
class Sweep:
    name: str
    """the sweep's name (`sweep-N`), what --resume takes"""
    activations: str
    """the activation set every SAE of it trains on"""
    runs: tuple[str, ...]
    """its SAE runs in saes/, in the order they were configured"""


def path_of(ws: Workspace, name: str) -> Path:
    return ws.root / FOLDER / f"{name}.json"


def is_sweep(ws: Workspace, name: str) -> bool:
    return bool(RUN_NAME.match(name or "")) and path_of(ws, name).is_file()


def load(ws: Workspace, name: str) -> Sweep:
    where = f"{FOLDER}/{name}.json"
    sweep = config_mod.from_dict(Sweep, read_json(path_of(ws, name)), where)
    if not sweep.runs or not all(RUN_NAME.match(run) for run in sweep.runs):
        raise WorkspaceError(f"{where} does not list its SAE runs; resume them one at a time with --resume RUN")
    return sweep


def record(ws: Workspace, activations: str, runs: list[str]) -> str:
    """Write a new sweep's record under the next free `sweep-N` (O_EXCL: two processes never take the same name)."""
    folder = ws.root / FOLDER
    folder.mkdir(exist_ok=True)
    taken = [int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(r"sweep-(\d+)\.json", p.name))]
    n = max(taken, default=0) + 1
    while True:
        try:
            os.close(os.open(folder / f"sweep-{n}.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            n += 1
    name = f"sweep-{n}"
    atomic_write_json(path_of(ws, name), config_mod.to_dict(Sweep(name, activations, tuple(runs))))
    return name


def runs_of(ws: Workspace, name: str) -> list[str]:
    """What --resume NAME continues: a sweep's runs, or the one run of that name."""
    return list(load(ws, name).runs) if is_sweep(ws, name) else [name]


def check_shared(cfgs: list[SAETrainConfig]) -> None:
    """SAEs trained in one pass share every batch: only their architecture, sparsity and width may differ."""
    first = {k: v for k, v in config_mod.to_dict(cfgs[0]).items() if k not in SWEPT_FIELDS}
    for cfg in cfgs[1:]:
        other = {k: v for k, v in config_mod.to_dict(cfg).items() if k not in SWEPT_FIELDS}
        differ = sorted(k for k in first if first[k] != other[k])
        if differ:
            raise StageError(
                f"the SAEs of one sweep must share {', '.join(differ)}; train SAEs that differ there separately"
            )
