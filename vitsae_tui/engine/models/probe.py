"""A linear probe: the classifier a headless backbone (DINOv2, a CLIP tower) gets from a labelled set, so class
effects, spliced-in fidelity and the workbench have logits to read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HELD_OUT_EVERY = 10
"""every 10th labelled image is held out to measure the probe's accuracy"""


@dataclass(frozen=True)
class ProbeFit:
    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)
    train_accuracy: float
    val_accuracy: float
    n_train: int
    n_val: int


def fit_probe(features: torch.Tensor, labels: np.ndarray, n_classes: int, weight_decay: float = 1e-4) -> ProbeFit:
    """Multinomial logistic regression on pooled features (N, D) by full-batch L-BFGS (deterministic), fit on every
    image but each HELD_OUT_EVERY-th, whose accuracy is the probe's validation accuracy."""
    x = features.double()
    y = torch.from_numpy(labels).long()
    held = torch.arange(len(y)) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    train = ~held if (~held).sum() and held.sum() else torch.ones(len(y), dtype=torch.bool)
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    linear = nn.Linear(x.shape[1], n_classes).double()
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=200, line_search_fn="strong_wolfe")
    z = (x - mean) / std

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(z[train]), y[train]) + weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():  # the standardisation folded into the weights: the probe reads raw pooled features
        weight = linear.weight / std
        bias = linear.bias - weight @ mean
        predicted = (x @ weight.t() + bias).argmax(1)
    accuracy = (predicted == y).double()
    return ProbeFit(
        weight.float(),
        bias.float(),
        float(accuracy[train].mean()),
        float(accuracy[held].mean()) if held.any() else float("nan"),
        int(train.sum()),
        int(held.sum()),
    )


def as_module(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    probe = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        probe.weight.copy_(weight)
        probe.bias.copy_(bias)
    return probe.requires_grad_(False)
