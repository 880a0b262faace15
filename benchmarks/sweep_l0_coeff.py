"""Sweep the JumpReLU sparsity coefficient lambda on an activation set and print L0, FVU and CE recovered per value.

    python benchmarks/sweep_l0_coeff.py --workspace WS --activations SET [--tokens 5000000] [--values 0.01,0.1,1]

Used to pick the default l0_coeff; not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
import time
from math import nan

from vitsae_tui.engine.config import SAETrainConfig
from vitsae_tui.engine.events import ignore
from vitsae_tui.engine.stages.train_sae import run as train_sae
from vitsae_tui.engine.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--activations", required=True)
    parser.add_argument("--tokens", type=int, default=5_000_000)
    parser.add_argument("--values", default="0.01,0.03,0.1,0.3,1,3")
    parser.add_argument("--bandwidth", type=float, default=SAETrainConfig.bandwidth)
    args = parser.parse_args()
    ws = Workspace(args.workspace)
    base = SAETrainConfig(activations=args.activations, tokens=args.tokens, bandwidth=args.bandwidth, eval_every=10**9)
    print(
        f"{'lambda':>8} {'L0':>8} {'FVU':>8} {'eval L0':>8} {'eval FVU':>9} {'CE rec':>7} {'acc SAE':>8} "
        f"{'dead':>6} {'s':>6}"
    )
    for value in (float(v) for v in args.values.split(",")):
        start = time.perf_counter()
        run = train_sae(dataclasses.replace(base, l0_coeff=value), ws, ignore, threading.Event())
        m = run.metrics
        print(
            f"{value:8.3g} {m['l0']:8.2f} {m['fvu']:8.4f} {m.get('eval_l0', nan):8.2f} {m.get('eval_fvu', nan):9.4f} "
            f"{m.get('ce_recovered', nan):7.3f} {m.get('acc_sae', nan):8.3f} {m['dead_fraction']:6.3f} "
            f"{time.perf_counter() - start:6.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
