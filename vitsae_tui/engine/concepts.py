"""Ground-truth concept recovery, selected on training images and scored on held-out ones.

For every concept a detector is chosen on the training images' patches (the SAE feature, firing or not; the best
raw neuron with its sign and threshold; a logistic probe on all neurons), then scored on held-out images: precision,
recall, F1 and MCC with 95% bootstrap intervals over images, over all patches and within the concept's parent (the
patches where some concept of its family is present: other shapes on object patches, other backgrounds on background
patches). The concept-blind "this patch is on an object / the background" indicator is scored beside them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vitsae_tui.engine.errors import check_stop

TOP_K = 32  # examples kept per feature in the index
SPARSE_KS = (1, 2, 4, 8, 16)
BOOTSTRAP_SAMPLES = 500
# the bar a feature clears before the browser names its concept: a concept-blind object detector never does
MATCH_F1, MATCH_PARENT_MCC = 0.5, 0.3


def decisive(value: float, bar: float, digits: int = 2) -> str:
    """`value` with enough digits that the printed number falls on the same side of `bar` as the value itself
    (0.498 against 0.5 prints '0.498', never '0.50')."""
    while digits < 6 and (round(value, digits) >= bar) != (value >= bar):
        digits += 1
    return f"{value:.{digits}f}"


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


def f1_matrix(predicted: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """F1 of every boolean prediction column for every label column: (N, K), (N, C) -> (K, C)."""
    tp = predicted.T.astype(np.float32) @ positives.astype(np.float32)
    denominator = predicted.sum(0)[:, None] + positives.sum(0)[None, :]
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def counts_of(predicted: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Confusion counts (..., 4) = TP, FP, FN, TN summed over the last axis."""
    return np.stack(
        [
            (predicted & positive).sum(-1),
            (predicted & ~positive).sum(-1),
            (~predicted & positive).sum(-1),
            (~predicted & ~positive).sum(-1),
        ],
        axis=-1,
    ).astype(np.float64)


def rates(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and MCC of confusion counts (..., 4); 0 where undefined."""
    tp, fp, fn, tn = np.moveaxis(counts, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        mcc = np.where(denominator > 0, (tp * tn - fp * fn) / denominator, 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "mcc": mcc}


@dataclass(frozen=True)
class Detection:
    """One detector of one concept on held-out patches: point values and 95% bootstrap intervals over images."""

    precision: float
    recall: float
    f1: float
    f1_low: float
    f1_high: float
    mcc: float
    mcc_low: float
    mcc_high: float
    auroc: float
    parent_f1: float
    """the same, counting as negatives only patches of the concept's parent (other shapes on objects, ...)"""
    parent_mcc: float
    parent_mcc_low: float
    parent_mcc_high: float

    def line(self, digits: int = 2) -> str:
        return (
            f"F1 {decisive(self.f1, MATCH_F1, digits)} [{self.f1_low:.{digits}f},{self.f1_high:.{digits}f}] · "
            f"MCC {self.mcc:.{digits}f} · within parent {decisive(self.parent_mcc, MATCH_PARENT_MCC, digits)}"
        )


class HeldOut:
    """Held-out patches grouped by image, with one set of bootstrap resamplings of images shared by all scores."""

    def __init__(self, image_of_token: np.ndarray, seed: int = 0):
        images, self.token_image = np.unique(image_of_token, return_inverse=True)
        n = len(images)
        self.n_images = n
        rng = np.random.default_rng(seed)
        self.weights = rng.multinomial(n, np.full(n, 1.0 / n), size=BOOTSTRAP_SAMPLES).astype(np.float64)  # (B, n)

    def per_image(self, predicted: np.ndarray, positive: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        """(n_images, 4) confusion counts of the kept patches of each image."""
        keep = np.ones(len(predicted), dtype=bool) if keep is None else keep
        out = np.zeros((self.n_images, 4), dtype=np.float64)
        cells = counts_of(predicted[keep][:, None], positive[keep][:, None])  # (n_kept, 4) one-hot counts
        np.add.at(out, self.token_image[keep], cells)
        return out

    def score(self, predicted: np.ndarray, scores: np.ndarray, positive: np.ndarray, parent: np.ndarray) -> Detection:
        everywhere = self.per_image(predicted, positive)
        within = self.per_image(predicted, positive, parent)
        point, point_parent = rates(everywhere.sum(0)), rates(within.sum(0))
        boot, boot_parent = rates(self.weights @ everywhere), rates(self.weights @ within)

        def interval(values: np.ndarray) -> tuple[float, float]:
            return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))

        f1_low, f1_high = interval(boot["f1"])
        mcc_low, mcc_high = interval(boot["mcc"])
        parent_low, parent_high = interval(boot_parent["mcc"])
        area = auroc(scores.astype(np.float64), positive)
        return Detection(
            precision=float(point["precision"]),
            recall=float(point["recall"]),
            f1=float(point["f1"]),
            f1_low=f1_low,
            f1_high=f1_high,
            mcc=float(point["mcc"]),
            mcc_low=mcc_low,
            mcc_high=mcc_high,
            auroc=0.5 if math.isnan(area) else area,
            parent_f1=float(point_parent["f1"]),
            parent_mcc=float(point_parent["mcc"]),
            parent_mcc_low=parent_low,
            parent_mcc_high=parent_high,
        )


@dataclass(frozen=True)
class ConceptScore:
    """How well one ground-truth concept is recovered on held-out images, by each kind of detector."""

    concept: str
    prevalence: float
    """fraction of held-out patches that show the concept"""
    parent_prevalence: float
    """its fraction among the held-out patches of its parent"""
    feature: int
    """the SAE feature with the best F1 on the training images (it predicts the concept where it fires)"""
    sae: Detection
    neuron: int
    """the raw neuron whose thresholded value had the best F1 on the training images"""
    neuron_sign: int
    neuron_threshold: float
    neurons: Detection
    probe: Detection
    """a logistic probe on every raw neuron, trained on the training images: the supervised ceiling"""
    baseline: Detection
    """the concept-blind indicator "this patch is on an object" (or "on the background")"""

    @property
    def matched(self) -> bool:
        return self.sae.f1 >= MATCH_F1 and self.sae.parent_mcc >= MATCH_PARENT_MCC


@dataclass(frozen=True)
class SparseProbing:
    """Mean held-out F1 and AUROC over concepts of logistic probes on k latents (or neurons) chosen on train."""

    k: int
    sae_f1: float
    sae_auroc: float
    neuron_f1: float
    neuron_auroc: float


@dataclass(frozen=True)
class Absorption:
    """Does the parent's feature fire on every child (shape x colour), or do child-specific features take over?"""

    parent: str
    children: str
    """the family that splits the parent (a circle's colours)"""
    feature: int
    recall_min: float
    """the parent feature's lowest held-out recall on one child"""
    worst_child: str
    recall_max: float
    split_features: int
    """distinct features chosen on train for the parent's children that are purer for the parent than 0.9"""
    absorbed_fraction: float
    """held-out parent patches where the parent feature is silent but one of those child features fires"""


@dataclass(frozen=True)
class ConceptReport:
    concepts: tuple[ConceptScore, ...]
    sparse_probing: tuple[SparseProbing, ...]
    absorption: tuple[Absorption, ...]
    train_images: int
    heldout_images: int
    heldout_split: str
    """'val': the model's validation images; 'train-heldout': training images the SAE never trained on"""


def family(name: str) -> str:
    return name.split(":", 1)[0]


def parents(positives: np.ndarray, names: list[str]) -> np.ndarray:
    """(N, C): each concept's parent, the patches where some concept of its family shows."""
    out = np.zeros_like(positives)
    for fam in {family(n) for n in names}:
        columns = [c for c, n in enumerate(names) if family(n) == fam]
        out[:, columns] = positives[:, columns].any(1, keepdims=True)
    return out


def object_indicator(positives: np.ndarray, names: list[str]) -> np.ndarray:
    """(N, C): the concept-blind baseline for each concept: on an object for object concepts, else background."""
    background = [c for c, n in enumerate(names) if family(n) == "background"]
    on_background = positives[:, background].any(1) if background else np.zeros(len(positives), dtype=bool)
    objects = [c for c, n in enumerate(names) if family(n) != "background"]
    on_object = positives[:, objects].any(1) if objects else np.zeros(len(positives), dtype=bool)
    return np.stack([on_background if family(n) == "background" else on_object for n in names], axis=1)


class Ranking:
    """Each score column sorted once, so the best-F1 threshold of any label is a cumulative sum away."""

    def __init__(self, scores: np.ndarray):
        self.order = np.argsort(-scores, axis=0, kind="stable")  # (N, K) rows, highest score first
        self.sorted = np.take_along_axis(scores, self.order, axis=0)
        # a cut after row i is realisable as "score > t" only where the next score is strictly lower
        self.cut = np.vstack([self.sorted[:-1] > self.sorted[1:], np.ones((1, scores.shape[1]), dtype=bool)])

    def best_thresholds(self, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per column, the best F1 over every threshold and that threshold (predict positive where score > t)."""
        true_positives = np.cumsum(positive[self.order], axis=0)  # (N, K) when the top i+1 rows are predicted
        predicted = np.arange(1, len(self.order) + 1)[:, None]
        f1 = np.where(self.cut, 2 * true_positives / (predicted + positive.sum()), -1.0)
        best = f1.argmax(0)
        columns = np.arange(self.order.shape[1])
        last = len(self.order) - 1
        below = np.where(best < last, self.sorted[np.minimum(best + 1, last), columns], self.sorted[best, columns] - 1)
        thresholds = (self.sorted[best, columns] + below) / 2
        return np.maximum(f1[best, columns], 0.0), thresholds


def best_thresholds(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return Ranking(scores).best_thresholds(positive)


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, l2: float = 1e-3, iterations: int = 25):
    """A class-balanced, lightly L2-regularised logistic probe fitted by Newton's method; returns x -> logits."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    X = np.hstack([(x_train - mean) / std, np.ones((len(x_train), 1))])  # (N, k + 1), the last column the bias
    y = y_train.astype(np.float64)
    weight = np.where(y_train, (len(y) - y.sum()) / max(y.sum(), 1.0), 1.0) / len(y)
    ridge = np.full(X.shape[1], 2 * l2)
    ridge[-1] = 1e-9
    w = np.zeros(X.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(X @ w, -30, 30)))
        gradient = X.T @ (weight * (p - y)) + ridge * w
        hessian = (X * (weight * p * (1 - p))[:, None]).T @ X + np.diag(ridge)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-7:
            break
    return lambda x: ((x - mean) / std) @ w[:-1] + w[-1]


def _probe_detection(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, parent: np.ndarray, held: HeldOut
) -> Detection:
    probe = fit_probe(x_train, y_train)
    train_scores = probe(x_train)
    _, threshold = best_thresholds(train_scores[:, None], y_train)
    test_scores = probe(x_test)
    return held.score(test_scores > threshold[0], test_scores, y_test, parent)


def concept_recovery(
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    names: list[str],
    heldout_split: str,
    train_images: int,
    progress: Callable[[int, int], None] | None = None,
    stop=None,
) -> ConceptReport:
    """Select every detector on `train` = (x_raw (N, d), feature_acts (N, F), concepts (N, C) bool) and score it on
    `test` = (x_raw, feature_acts, concepts, image id of each patch); `progress(done, total)` follows the concepts,
    and a set `stop` event raises StopRequested between them."""
    x_train, f_train, y_train = train
    x_test, f_test, y_test, image_of_token = test
    held = HeldOut(image_of_token)
    fires_train, fires_test = f_train > 0, f_test > 0
    feature_f1 = f1_matrix(fires_train, y_train)  # (F, C)
    neuron_ranking = Ranking(np.concatenate([x_train, -x_train], axis=1))  # a neuron's sign is arbitrary
    parent_test = parents(y_test, names)
    baseline_test = object_indicator(y_test, names)
    results = []
    for c, name in enumerate(names):
        check_stop(stop)
        if progress is not None:
            progress(c, len(names))
        if not (y_train[:, c].any() and y_test[:, c].any() and (~y_test[:, c]).any()):
            continue
        feature = int(feature_f1[:, c].argmax())
        neuron_f1, neuron_threshold = neuron_ranking.best_thresholds(y_train[:, c])
        best = int(neuron_f1.argmax())
        neuron, sign = best % x_train.shape[1], (1 if best < x_train.shape[1] else -1)
        neuron_scores = sign * x_test[:, neuron].astype(np.float64)
        parent = parent_test[:, c]
        results.append(
            ConceptScore(
                concept=name,
                prevalence=float(y_test[:, c].mean()),
                parent_prevalence=float(y_test[parent, c].mean()) if parent.any() else 0.0,
                feature=feature,
                sae=held.score(fires_test[:, feature], f_test[:, feature], y_test[:, c], parent),
                neuron=neuron,
                neuron_sign=sign,
                neuron_threshold=float(neuron_threshold[best]),
                neurons=held.score(neuron_scores > neuron_threshold[best], neuron_scores, y_test[:, c], parent),
                probe=_probe_detection(x_train, y_train[:, c], x_test, y_test[:, c], parent, held),
                baseline=held.score(baseline_test[:, c], baseline_test[:, c].astype(np.float64), y_test[:, c], parent),
            )
        )
    return ConceptReport(
        concepts=tuple(results),
        sparse_probing=tuple(sparse_probing(train, test, names)),
        absorption=tuple(absorption(train, test, names, feature_f1)),
        train_images=train_images,
        heldout_images=held.n_images,
        heldout_split=heldout_split,
    )


def _ranked_by_mean_difference(acts: np.ndarray, scale: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Columns by how much their standardised means differ between positive and negative patches (SAEBench)."""
    difference = acts[positive].mean(0) - acts[~positive].mean(0)
    return np.argsort(-np.abs(difference) / scale, kind="stable")


def sparse_probing(train, test, names: list[str], ks: tuple[int, ...] = SPARSE_KS) -> list[SparseProbing]:
    """k-sparse probing: for each k, logistic probes on the k latents (or neurons) chosen on train, scored on test."""
    x_train, f_train, y_train = train
    x_test, f_test, y_test, _ = test
    usable = [c for c in range(len(names)) if y_train[:, c].any() and y_test[:, c].any() and (~y_test[:, c]).any()]
    kinds = {"sae": (f_train, f_test), "neuron": (x_train, x_test)}
    scales = {kind: a_train.std(0) + 1e-6 for kind, (a_train, _) in kinds.items()}
    f1s = {(kind, k): [] for kind in kinds for k in ks}
    aurocs = {(kind, k): [] for kind in kinds for k in ks}
    for c in usable:
        for kind, (a_train, a_test) in kinds.items():
            ranked = _ranked_by_mean_difference(a_train, scales[kind], y_train[:, c])
            for k in ks:
                columns = ranked[:k]
                probe = fit_probe(a_train[:, columns], y_train[:, c])
                _, threshold = best_thresholds(probe(a_train[:, columns])[:, None], y_train[:, c])
                test_scores = probe(a_test[:, columns])
                f1s[kind, k].append(float(rates(counts_of(test_scores > threshold[0], y_test[:, c]))["f1"]))
                aurocs[kind, k].append(auroc(test_scores, y_test[:, c]))
    return [
        SparseProbing(
            k=k,
            sae_f1=float(np.mean(f1s["sae", k])) if usable else 0.0,
            sae_auroc=_mean_or_half(aurocs["sae", k]),
            neuron_f1=float(np.mean(f1s["neuron", k])) if usable else 0.0,
            neuron_auroc=_mean_or_half(aurocs["neuron", k]),
        )
        for k in ks
    ]


def _mean_or_half(values: list[float]) -> float:
    """The mean of the defined AUROCs; 0.5 (chance) when none is (JSON has no NaN)."""
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else 0.5


CHILD_FAMILIES = {"shape": "colour", "colour": "shape"}


def absorption(train, test, names: list[str], feature_f1: np.ndarray) -> list[Absorption]:
    """Feature absorption and splitting for each shape (children: its colours) and each colour (its shapes)."""
    _, f_train, y_train = train
    _, f_test, y_test, _ = test
    fires_train, fires_test = f_train > 0, f_test > 0
    out = []
    for p, parent in enumerate(names):
        child_family = CHILD_FAMILIES.get(family(parent))
        if child_family is None or not y_test[:, p].any():
            continue
        feature = int(feature_f1[:, p].argmax())
        children = [(n, y_train[:, c] & y_train[:, p], y_test[:, c] & y_test[:, p]) for c, n in enumerate(names)]
        children = [(n, a, b) for n, a, b in children if family(n) == child_family and a.any() and b.any()]
        if not children:
            continue
        recalls = [float(fires_test[b, feature].mean()) for _, _, b in children]
        child_features = set()
        for _, child_train, _ in children:
            f1 = f1_matrix(fires_train, child_train[:, None])[:, 0]
            f1[feature] = -1.0
            candidate = int(f1.argmax())
            fired = fires_train[:, candidate]
            purity = float(y_train[fired, p].mean()) if fired.any() else 0.0
            if f1[candidate] >= 0.5 and purity >= 0.9:
                child_features.add(candidate)
        silent = y_test[:, p] & ~fires_test[:, feature]
        taken = fires_test[:, sorted(child_features)].any(1) if child_features else np.zeros(len(y_test), dtype=bool)
        worst = int(np.argmin(recalls))
        out.append(
            Absorption(
                parent=parent,
                children=child_family,
                feature=feature,
                recall_min=recalls[worst],
                worst_child=children[worst][0],
                recall_max=float(max(recalls)),
                split_features=len(child_features),
                absorbed_fraction=float((silent & taken).sum() / max(1, y_test[:, p].sum())),
            )
        )
    return out
