"""Ground-truth concept recovery: AUROC with tied ranks, top-k precision, and a logistic-probe ceiling."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TOP_K = 32  # examples kept per feature, and the k of top-k precision


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve with ties counted half (mid-ranks); nan when one class is absent."""
    if positive.all() or not positive.any():
        return math.nan
    return float(auroc_matrix(scores[:, None], positive[:, None])[0, 0])


def mid_ranks(scores: np.ndarray) -> np.ndarray:
    """Per column, 1-based ranks with ties given their average rank: (N, K) -> (N, K) float64."""
    ranks = np.empty(scores.shape, dtype=np.float64)
    for j in range(scores.shape[1]):
        order = np.argsort(scores[:, j], kind="mergesort")
        _, first, counts = np.unique(scores[order, j], return_index=True, return_counts=True)
        ranks[order, j] = np.repeat(first + (counts - 1) / 2.0 + 1.0, counts)
    return ranks


def auroc_matrix(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """AUROC of every score column for every boolean label column at once: (N, K), (N, C) -> (K, C)."""
    ranks = mid_ranks(scores)
    n_pos = positives.sum(0).astype(np.float64)
    n_neg = len(positives) - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ranks.T @ positives.astype(np.float64) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def top_precision_matrix(scores: np.ndarray, positives: np.ndarray, k: int) -> np.ndarray:
    """For each score column, the fraction of its k highest-scoring rows that carry each label: (K, C)."""
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1, axis=0)[:k]  # (k, K) row ids
    return positives[top].mean(axis=0).astype(np.float64) if k else np.zeros((scores.shape[1], positives.shape[1]))


def probe_auroc(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, steps: int = 200
) -> float:
    """Held-out AUROC of a logistic-regression probe (the supervised ceiling for one concept)."""
    import torch  # only the probe needs it: the index's readers import this module for ConceptScore

    if y_train.all() or not y_train.any():
        return math.nan
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xt = torch.from_numpy((x_train - mean) / std).float()
    yt = torch.from_numpy(y_train.astype(np.float32))
    w = torch.zeros(xt.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")
    pos_weight = (len(yt) - yt.sum()) / yt.sum().clamp_min(1)

    def closure():
        opt.zero_grad()
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt, pos_weight=pos_weight)
            + 1e-3 * w.pow(2).sum()
        )
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        scores = (torch.from_numpy((x_test - mean) / std).float() @ w + b).numpy()
    return auroc(scores, y_test)


@dataclass(frozen=True)
class ConceptScore:
    """How well one ground-truth concept is recovered, by the best SAE feature and by the best raw neuron."""

    concept: str
    prevalence: float
    """fraction of sampled tokens that show the concept"""
    feature: int
    """the SAE feature with the best AUROC for it"""
    feature_auroc: float
    neuron: int
    neuron_auroc: float
    """the best raw neuron's AUROC (either sign)"""
    probe_auroc: float | None
    """a linear probe on the raw activations, scored on held-out tokens: the ceiling (NaN: not computable)"""
    top_precision: float | None
    """fraction of the best feature's top-k examples that show the concept (NaN: it has none)"""
    # monosemanticity, which AUROC (favouring dense scores) misses: the purest top-k of any feature vs any neuron
    best_feature_precision: float
    best_feature_by_precision: int
    best_neuron_precision: float

    def __post_init__(self) -> None:
        for name in ("probe_auroc", "top_precision"):  # JSON stores NaN as null
            if getattr(self, name) is None:
                object.__setattr__(self, name, math.nan)


def concept_recovery(
    x_raw: np.ndarray,
    feature_acts: np.ndarray,
    concepts: np.ndarray,
    names: list[str],
    top_tokens: np.ndarray,
    token_concepts_all: np.ndarray,
) -> list[ConceptScore]:
    """Per concept: best SAE feature AUROC, best neuron AUROC (either sign), probe ceiling, precision of top examples.

    x_raw (N, d), feature_acts (N, F), concepts (N, n_concepts) bool for the same sampled tokens;
    top_tokens (F, k) the index's top examples and token_concepts_all (n_tokens, n_concepts) for their precision.
    """
    n = len(x_raw)
    split = np.arange(n) % 5 != 4  # probe trains on 4/5 of the sampled tokens, is scored on the rest
    feature_aurocs = auroc_matrix(feature_acts, concepts)  # (F, C)
    neuron_aurocs = auroc_matrix(x_raw, concepts)  # (d, C)
    neuron_aurocs = np.maximum(neuron_aurocs, 1.0 - neuron_aurocs)  # a neuron's sign is arbitrary
    k = TOP_K
    feature_precision = top_precision_matrix(feature_acts, concepts, k)  # (F, C)
    neuron_precision = np.maximum(top_precision_matrix(x_raw, concepts, k), top_precision_matrix(-x_raw, concepts, k))
    results = []
    for c, name in enumerate(names):
        positive = concepts[:, c]
        if positive.all() or not positive.any():
            continue
        feature_scores, neuron_scores = feature_aurocs[:, c], neuron_aurocs[:, c]
        best = int(np.nanargmax(feature_scores))
        tops = top_tokens[best][top_tokens[best] >= 0]
        results.append(
            ConceptScore(
                concept=name,
                prevalence=float(positive.mean()),
                feature=best,
                feature_auroc=float(feature_scores[best]),
                neuron=int(np.nanargmax(neuron_scores)),
                neuron_auroc=float(np.nanmax(neuron_scores)),
                probe_auroc=probe_auroc(x_raw[split], positive[split], x_raw[~split], positive[~split]),
                top_precision=float(token_concepts_all[tops, c].mean()) if len(tops) else math.nan,
                best_feature_precision=float(feature_precision[:, c].max()),
                best_feature_by_precision=int(feature_precision[:, c].argmax()),
                best_neuron_precision=float(neuron_precision[:, c].max()),
            )
        )
    return results
