"""Sweep the JumpReLU sparsity coefficient lambda on an activation set: L0, FVU and the held-out fidelity per value.

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
    parser.add_argument("--lr", type=float, default=SAETrainConfig.lr)
    parser.add_argument("--theta-lr-scale", type=float, default=SAETrainConfig.theta_lr_scale)
    parser.add_argument("--pre-act-coeff", type=float, default=SAETrainConfig.pre_act_coeff)
    parser.add_argument("--bf16", action="store_true", help="bf16 matmuls (emulated on CPU) instead of float32")
    args = parser.parse_args()
    ws = Workspace(args.workspace)
    base = SAETrainConfig(
        activations=args.activations,
        tokens=args.tokens,
        bandwidth=args.bandwidth,
        lr=args.lr,
        theta_lr_scale=args.theta_lr_scale,
        pre_act_coeff=args.pre_act_coeff,
        eval_every=10**9,
    )
    print(
        f"{'lambda':>8} {'L0':>7} {'FVU':>7} {'eval L0':>7} {'evalFVU':>7} {'dCE':>7} {'KL':>7} {'agree':>6} "
        f"{'acc':>6} {'worst':>6} {'CErec':>6} {'dead':>5} {'window':>8} {'reached':>7} {'s':>5}"
    )
    for value in (float(v) for v in args.values.split(",")):
        start = time.perf_counter()
        cfg = dataclasses.replace(base, l0_coeff=value, bf16=args.bf16)
        run = train_sae(cfg, ws, ignore, threading.Event(), emulate_bf16=args.bf16)
        m = run.metrics
        print(
            f"{value:8.3g} {m['l0']:7.2f} {m['fvu']:7.4f} {m.get('eval_l0', nan):7.2f} {m.get('eval_fvu', nan):7.4f} "
            f"{m.get('eval_delta_ce', nan):7.4f} {m.get('eval_kl', nan):7.4f} {m.get('eval_top1_agreement', nan):6.3f} "
            f"{m.get('acc_sae', nan):6.3f} {m.get('acc_worst_class_sae', nan):6.3f} {m.get('ce_recovered', nan):6.3f} "
            f"{m['dead_fraction']:5.3f} {m.get('in_window', nan):8.2e} {m.get('theta_reached', nan):7.3f} "
            f"{time.perf_counter() - start:5.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
