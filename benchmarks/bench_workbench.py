"""Patch-workbench speed: one feature edit re-run from the hook, a full `intervene`, and an `attribute`.

    python benchmarks/bench_workbench.py --workspace WS --sae RUN [--repeats 50] [--device cpu]

Prints medians against the baseline measured in the same run: the clean model's forward pass on the same image from
the hook (the least any edit can cost). Targets (issue 15): one edit and re-run ≤ 50 ms for the demo model on CPU,
≤ 300 ms for the seed model. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vitsae_tui.engine.feature_index import open_index_for
from vitsae_tui.engine.workbench import Edit, Workbench
from vitsae_tui.engine.workspace import Workspace


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, first-call dispatch
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--sae", required=True)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    ws = Workspace(args.workspace)
    bench = Workbench(ws, open_index_for(ws, args.sae), args.device)
    image = 0
    x = bench._acts(image)
    feature = bench.attribute(image, top=1).features[0]["feature"]
    edit = Edit((feature,), "zero")

    def forward() -> None:
        with torch.no_grad():
            bench._logits(x)

    def one_edit() -> None:  # encode, edit, splice with the error term, run the model from the hook
        with torch.no_grad():
            f = bench._encode(x)
            spliced = bench._decode(f) + (x - bench._decode(f))
            bench._logits(spliced + bench._edited(f, edit, list(range(f.shape[0]))))

    baseline = median_ms(forward, args.repeats)
    model = bench.index.store.provenance.model_run
    print(f"model {model}, SAE {args.sae} ({bench.index.d_sae} features), {args.device}")
    print(f"baseline: the model from the hook, one image:          {baseline:7.2f} ms")
    for name, fn in (
        ("one edit, re-run from the hook (target ≤ 50 ms demo)", one_edit),
        ("intervene (before, after, and every patch alone)", lambda: bench.intervene(image, edit)),
        ("attribute (gradient, 16 exact ablations)", lambda: bench.attribute(image)),
    ):
        ms = median_ms(fn, args.repeats)
        print(f"{name:<54} {ms:7.2f} ms  ({ms / baseline:.1f}x baseline)")


if __name__ == "__main__":
    main()
