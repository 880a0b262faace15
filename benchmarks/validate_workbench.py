"""Do concept features do what they read? Zero each shape or colour feature on the images where it fires most and
measure the logits of the classes that carry its concept, against two baselines measured the same way.

    python benchmarks/validate_workbench.py --workspace WS --sae RUN [--images 16] [--random 5]

On `synthetic` a class is a colour temperature and a shape ("warm circle"): the shape concept `shape:circle` belongs
to both circle classes, a colour concept (`colour:red`) to the five warm or the five cool ones. For each concept's
matched feature (from the index), on its top firing images:
  - mean change of the concept classes' logits, and of the other classes', when the feature is zeroed on every patch;
  - how often the predicted class flips;
  - baseline 1: the same for `--random` alive features of the nearest density (mean over them);
  - baseline 2: zeroing the concept's best single residual-stream neuron (from the index) on every patch.
Also the linear attribution against the exact zeroing effect: Spearman over the top 16 features, per image, mean.
Not a test: a finding, printed for the issue note.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from vitsae_tui.engine.feature_index import open_index_for
from vitsae_tui.engine.synthetic import CLASS_NAMES, COLOURS
from vitsae_tui.engine.workbench import Edit, Workbench
from vitsae_tui.engine.workspace import Workspace


def concept_classes(concept: str) -> list[int] | None:
    kind, value = concept.split(":")
    if kind == "shape":
        return [i for i, name in enumerate(CLASS_NAMES) if name.endswith(value)]
    if kind == "colour":
        warm = COLOURS[value][1]
        return [i for i, name in enumerate(CLASS_NAMES) if name.startswith("warm" if warm else "cool")]
    return None


def zeroing(bench: Workbench, images: list[int], feature: int, classes: list[int]) -> tuple[float, float, float]:
    """(mean Δ logit of `classes`, of the other classes, flip rate) when `feature` is zeroed on every patch."""
    inside, outside, flips = [], [], 0
    others = [c for c in range(len(CLASS_NAMES)) if c not in classes]
    for image in images:
        result = bench.intervene(image, Edit((feature,), "zero"))
        delta = result.logits_after - result.logits_spliced
        inside.append(delta[classes].mean())
        outside.append(delta[others].mean())
        flips += int(result.logits_after.argmax() != result.logits_spliced.argmax())
    return float(np.mean(inside)), float(np.mean(outside)), flips / len(images)


def neuron_zeroing(bench: Workbench, images: list[int], neuron: int, classes: list[int]) -> tuple[float, float, float]:
    inside, outside, flips = [], [], 0
    others = [c for c in range(len(CLASS_NAMES)) if c not in classes]
    with torch.no_grad():
        for image in images:
            x = bench._acts(image)
            clean = bench._logits(x)[0].cpu().numpy()
            ablated = x.clone()
            ablated[:, neuron] = 0.0
            after = bench._logits(ablated)[0].cpu().numpy()
            delta = after - clean
            inside.append(delta[classes].mean())
            outside.append(delta[others].mean())
            flips += int(after.argmax() != clean.argmax())
    return float(np.mean(inside)), float(np.mean(outside)), flips / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--sae", required=True)
    parser.add_argument("--images", type=int, default=16, help="top firing images per feature")
    parser.add_argument("--random", type=int, default=5, help="random features of similar density per concept")
    args = parser.parse_args()

    ws = Workspace(args.workspace)
    index = open_index_for(ws, args.sae)
    bench = Workbench(ws, index)
    density = index.arrays.density
    alive = np.flatnonzero(density > 0)
    rng = np.random.default_rng(0)
    print(
        f"{'concept':<18} {'feature':>7} {'Δ concept':>9} {'Δ other':>8} {'flips':>6} │ {'random Δc':>9} "
        f"{'Δo':>6} {'flips':>6} │ {'neuron Δc':>9} {'Δo':>6} {'flips':>6}"
    )
    gaps = {"feature": [], "random": [], "neuron": []}
    for concept in index.concepts:
        classes = concept_classes(concept.concept)
        if classes is None:
            continue
        feature = concept.feature
        images = list(dict.fromkeys(image for image, _, _ in index.top_examples(feature)))[: args.images]
        if not images:
            continue
        ours = zeroing(bench, images, feature, classes)
        similar = alive[np.argsort(np.abs(np.log(density[alive]) - np.log(max(density[feature], 1e-12))))]
        pool = [int(j) for j in similar[: 4 * args.random] if j != feature]
        picked = rng.choice(pool, size=min(args.random, len(pool)), replace=False)
        random = np.mean([zeroing(bench, images, int(j), classes) for j in picked], axis=0)
        neuron = neuron_zeroing(bench, images, concept.neuron, classes)
        for name, row in (("feature", ours), ("random", random), ("neuron", neuron)):
            gaps[name].append(row[0] - row[1])
        print(
            f"{concept.concept:<18} {feature:>7} {ours[0]:>+9.3f} {ours[1]:>+8.3f} {ours[2]:>6.0%} │ "
            f"{random[0]:>+9.3f} {random[1]:>+6.3f} {random[2]:>6.0%} │ {neuron[0]:>+9.3f} {neuron[1]:>+6.3f} "
            f"{neuron[2]:>6.0%}"
        )
    print(
        "mean (Δ concept classes − Δ other classes): "
        + ", ".join(f"{name} {np.mean(values):+.3f}" for name, values in gaps.items() if values)
    )
    correlations = []
    for image in np.linspace(0, index.n_images - 1, 20).round().astype(int):
        rho = bench.attribute(int(image)).rank_correlation
        if rho is not None:
            correlations.append(rho)
    print(
        f"attribution vs exact zeroing, Spearman over the top 16 features: mean {statistics.mean(correlations):.2f} "
        f"(min {min(correlations):.2f}) over {len(correlations)} images"
    )


if __name__ == "__main__":
    main()
