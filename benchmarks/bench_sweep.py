"""A sweep of N SAEs in one pass over the data against one SAE alone: tokens/s per SAE, measured side by side.

    python benchmarks/bench_sweep.py --workspace WS --activations SET [--n 4] [--tokens 1000000] [--arch jumprelu]

Both runs train in a scratch workspace that links WS's activations and models (WS gets no new runs). The rate of a
run is the median of its metrics rows' tokens/s (the wall time of a sweep's pass is shared by its SAEs, so a sweep's
rate per SAE is N x that). Not a test.
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
        alone = run_sweep([sweep_configs(base, **sparsities)[0]], ws, ignore, threading.Event())
        together = run_sweep(sweep_configs(base, **sparsities), ws, ignore, threading.Event())
        single = rate(alone[0].run_dir)
        per_sae = rate(together[0].run_dir) * len(together)
        print(f"{args.arch}, {args.tokens:,} tokens, {args.device}")
        print(f"one SAE alone          {single:12,.0f} tokens/s")
        print(f"{len(together)} SAEs in one pass    {per_sae:12,.0f} tokens/s per SAE")
        print(f"sweep / alone per SAE  {per_sae / single:.2f}   (target >= 0.9)")


if __name__ == "__main__":
    main()
