"""Patch-workbench speed: one feature edit re-run from the hook, a full `intervene`, and an `attribute`.

    python benchmarks/bench_workbench.py --workspace WS --sae RUN [--repeats 50] [--device cpu]
    python benchmarks/bench_workbench.py --preset seed [--repeats 50]

With a workspace: the trained model and SAE of that index. With --preset: the preset's model and an SAE of the
default width, both at their initial weights (the time does not depend on the weights), on one image's worth of
random activations at the default hook.

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


def preset_timings(preset: str, repeats: int, device: str) -> None:
    """One edit re-run from the hook for a preset's architecture, weights as initialised."""
    from vitsae_tui.engine import config as config_mod
    from vitsae_tui.engine.config import SAETrainConfig
    from vitsae_tui.engine.models.native import VisionTransformerClassifier, default_hook
    from vitsae_tui.engine.saes.jumprelu import JumpReLUSAE

    cfg = config_mod.preset(preset).model
    model = VisionTransformerClassifier(cfg).to(device).eval()
    hook = default_hook(cfg)
    d_sae = SAETrainConfig().expansion * cfg.n_embd
    weights = {k: v.to(device) for k, v in JumpReLUSAE(cfg.n_embd, d_sae, theta_init=0.0).raw_weights().items()}
    x = torch.randn(cfg.n_tokens, cfg.n_embd, device=device)

    def forward() -> None:
        with torch.no_grad():
            model.run_from(hook, x[None])

    def one_edit() -> None:  # as Workbench.intervene computes its "after": encode, zero feature 0, splice, re-run
        with torch.no_grad():
            z = x @ weights["W_enc"] + weights["b_enc"]
            f = z * (z > weights["threshold"])
            edited = f.clone()
            edited[:, 0] = 0.0
            model.run_from(hook, (x + (edited - f) @ weights["W_dec"])[None])

    baseline = median_ms(forward, repeats)
    ms = median_ms(one_edit, repeats)
    print(f"{preset} model ({cfg.n_layer} blocks, d {cfg.n_embd}), SAE {d_sae} features, hook {hook}, {device}")
    print(f"baseline: the model from the hook, one image:          {baseline:7.2f} ms")
    target = {"demo": 50, "seed": 300}.get(preset)
    print(f"one edit, re-run from the hook (target ≤ {target} ms)        {ms:7.2f} ms  ({ms / baseline:.1f}x baseline)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace")
    parser.add_argument("--sae")
    parser.add_argument("--preset", choices=["demo", "seed"])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.preset:
        preset_timings(args.preset, args.repeats, args.device)
        return
    if not (args.workspace and args.sae):
        parser.error("give --workspace WS --sae RUN, or --preset demo|seed")

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
