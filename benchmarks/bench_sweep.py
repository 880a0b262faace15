"""A sweep of N SAEs in one pass over the data against one SAE alone: tokens/s per SAE, measured side by side.

    python benchmarks/bench_sweep.py --workspace WS --activations SET [--n 4] [--tokens 1000000] [--arch jumprelu]

Both runs train in a scratch workspace that links WS's activations and models (WS gets no new runs), alternating
`--repeats` times (this VM's speed drifts by ~10% over minutes); each side's rate is the median over its runs of the
median of the run's metrics rows' tokens/s (a sweep's pass is shared by its SAEs, so its rate per SAE is N x that).
Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
from pathlib import Path

from vitsae_tui.engine.config import SAETrainConfig, sweep_configs
from vitsae_tui.engine.events import ignore
from vitsae_tui.engine.stages.train_sae import run_sweep
from vitsae_tui.engine.workspace import Workspace, read_jsonl


def rate(run_dir: Path) -> float:
    rows = [r["tokens_per_s"] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "step"]
    return statistics.median(rows[1:] or rows)  # the first window holds the warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--activations", required=True)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--arch", default="jumprelu", choices=["jumprelu", "topk", "batchtopk"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    source = Path(args.workspace).expanduser().resolve()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for kind in ("activations", "models"):
            (root / kind).symlink_to(source / kind)
        ws = Workspace(root)
        base = SAETrainConfig(
            activations=args.activations, arch=args.arch, tokens=args.tokens, eval_every=10**9, device=args.device
        )
        sparsities = (
            {"l0_coeff": tuple(0.001 * 2**i for i in range(args.n))}
            if args.arch == "jumprelu"
            else {"k": tuple(8 * (i + 1) for i in range(args.n))}
        )
        configs = sweep_configs(base, **sparsities)
        singles, per_saes = [], []
        for _ in range(args.repeats):
            alone = run_sweep(configs[:1], ws, ignore, threading.Event())
            together = run_sweep(configs, ws, ignore, threading.Event())
            singles.append(rate(alone[0].run_dir))
            per_saes.append(rate(together[0].run_dir) * len(together))
        single, per_sae = statistics.median(singles), statistics.median(per_saes)
        ratios = ", ".join(f"{b / a:.2f}" for a, b in zip(singles, per_saes))
        print(
            f"{args.arch}, {args.tokens:,} tokens, {args.device}, {args.repeats} alternating repeats (ratios {ratios})"
        )
        print(f"one SAE alone          {single:12,.0f} tokens/s")
        print(f"{len(configs)} SAEs in one pass    {per_sae:12,.0f} tokens/s per SAE")
        print(f"sweep / alone per SAE  {per_sae / single:.2f}   (target >= 0.9)")


if __name__ == "__main__":
    main()
