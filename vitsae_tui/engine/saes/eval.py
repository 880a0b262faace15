"""SAE evaluation on held-out images: FVU, L0, feature density, and the classifier with the SAE spliced in."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vitsae_tui.engine.activation_set import ActivationSet
from vitsae_tui.engine.metrics import Histogram, SAEEval
from vitsae_tui.engine.saes.base import SparseAutoencoder

DENSITY_BINS = np.linspace(-7.0, 0.0, 29)  # log10 firing frequency, 0.25 decades per bin
THETA_BINS = np.linspace(-6.0, 1.0, 29)  # log10 threshold in the scaled input space, 0.25 decades per bin
MAX_EVAL_IMAGES = 1000


def heldout_images(n_images: int, every: int) -> np.ndarray:
    """Every `every`-th image (never trained on): spread over the set, so no class or source is left out."""
    return np.arange(every - 1, n_images, every)


def fvu(x: torch.Tensor, x_hat: torch.Tensor, mean: torch.Tensor) -> float:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mu||^2 with mu the per-dimension mean."""
    return float((x - x_hat).pow(2).sum() / (x - mean).pow(2).sum().clamp_min(1e-12))


def mean_max_cosine(w_dec: torch.Tensor, rows_per_chunk: int = 2048) -> float:
    """Mean over features of the largest cosine similarity between its decoder row and any other's (redundancy)."""
    w = w_dec / w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = []
    for start in range(0, len(w), rows_per_chunk):  # (chunk, F) at a time: F x F would not fit for wide SAEs
        cosine = w[start : start + rows_per_chunk] @ w.t()
        rows = torch.arange(len(cosine), device=w.device)
        cosine[rows, rows + start] = -1.0
        best.append(cosine.max(1).values)
    return float(torch.cat(best).mean()) if best else 0.0


def density_histogram(frequency: np.ndarray) -> Histogram:
    """Counts of features per log10-frequency bin, plus how many never fired."""
    fired = frequency[frequency > 0]
    counts, _ = np.histogram(np.log10(np.clip(fired, 10 ** DENSITY_BINS[0], 1.0)), bins=DENSITY_BINS)
    return Histogram(tuple(DENSITY_BINS.tolist()), tuple(counts.tolist()), never_fired=int((frequency == 0).sum()))


def threshold_histogram(theta: np.ndarray) -> Histogram:
    """Counts of features per log10-threshold bin (values outside the edges fall into the end bins)."""
    clipped = np.clip(np.log10(np.maximum(theta, 1e-12)), THETA_BINS[0], THETA_BINS[-1])
    counts, _ = np.histogram(clipped, bins=THETA_BINS)
    return Histogram(tuple(THETA_BINS.tolist()), tuple(counts.tolist()), median=float(np.median(theta)))


def recovered(clean: float, spliced: float, ablated: float) -> float:
    """How much of the gap between mean-ablation and the clean model the SAE closes (1: all of it)."""
    gap = ablated - clean
    return float((ablated - spliced) / gap) if abs(gap) > 1e-12 else math.nan


@dataclass(frozen=True)
class Fidelity:
    """The classifier with the SAE spliced in against the clean one (the fields of metrics.SAEEval they fill)."""

    eval_delta_ce: float
    eval_kl: float
    eval_top1_agreement: float
    ce_clean: float
    ce_sae: float
    acc_clean: float
    acc_sae: float
    acc_worst_class_sae: float
    acc_worst_class_clean: float
    acc_worst_class: int


def fidelity(logits_clean: torch.Tensor, logits_sae: torch.Tensor, labels: torch.Tensor) -> Fidelity:
    """How far splicing the SAE in moves the classifier: ΔCE, KL(clean || spliced), top-1 agreement, accuracies."""
    log_p_clean = logits_clean.log_softmax(-1)
    log_p_sae = logits_sae.log_softmax(-1)
    kl = (log_p_clean.exp() * (log_p_clean - log_p_sae)).sum(-1).mean()
    ce_clean, ce_sae = F.cross_entropy(logits_clean, labels), F.cross_entropy(logits_sae, labels)
    right_clean = logits_clean.argmax(-1) == labels
    right_sae = logits_sae.argmax(-1) == labels
    classes = labels.unique()
    per_class_clean = torch.stack([right_clean[labels == c].float().mean() for c in classes])
    per_class_sae = torch.stack([right_sae[labels == c].float().mean() for c in classes])
    worst = int(per_class_sae.argmin())
    return Fidelity(
        eval_delta_ce=float(ce_sae - ce_clean),
        eval_kl=float(kl),
        eval_top1_agreement=float((logits_clean.argmax(-1) == logits_sae.argmax(-1)).float().mean()),
        ce_clean=float(ce_clean),
        ce_sae=float(ce_sae),
        acc_clean=float(right_clean.float().mean()),
        acc_sae=float(right_sae.float().mean()),
        acc_worst_class_sae=float(per_class_sae[worst]),
        acc_worst_class_clean=float(per_class_clean[worst]),
        acc_worst_class=int(classes[worst]),
    )


class Evaluator:
    """Scores an SAE on held-out images: the model's validation split when it was collected, else the every-n-th
    training images the SAE never trained on (the classifier did)."""

    def __init__(
        self,
        store: ActivationSet,
        heldout_every: int,
        device: torch.device,
        model=None,
        validation: ActivationSet | None = None,
    ):
        source = validation if validation is not None else store
        ids = (
            np.arange(validation.n_images)[:MAX_EVAL_IMAGES]
            if validation is not None
            else heldout_images(store.n_images, heldout_every)[:MAX_EVAL_IMAGES]
        )
        self.split = "val" if validation is not None else "train-heldout"
        self.image_ids = ids
        acts = (
            np.stack([source.image(int(i)) for i in ids])
            if len(ids)
            else np.empty((0, source.tokens_per_image, source.d_model))
        )
        self.acts = torch.from_numpy(acts.astype(np.float32)).to(device)  # (N, T, d) raw
        prefixes = source.prefixes(ids) if len(ids) else None  # CLS and register tokens ride along, never replaced
        self.prefix = torch.from_numpy(prefixes.astype(np.float32)).to(device) if prefixes is not None else None
        self.labels = torch.from_numpy(source.labels()[ids]).to(device)
        self.mean = torch.from_numpy(store.mean.astype(np.float32)).to(device)  # the training set's mean
        self.model = model
        self.hook = store.hook
        self.logits_clean: torch.Tensor | None = None
        self.ablated: Fidelity | None = None

    def _logits(self, acts: torch.Tensor) -> torch.Tensor:
        def prefix(i: int):
            return self.prefix[i : i + 128] if self.prefix is not None else None

        return torch.cat(
            [self.model.run_from(self.hook, acts[i : i + 128], prefix(i)) for i in range(0, len(acts), 128)]
        ).float()

    @torch.no_grad()
    def evaluate(self, sae: SparseAutoencoder, run: str, step: int) -> SAEEval | None:
        """The SAE's held-out evaluation row at `step` (None when there are no held-out images)."""
        if len(self.acts) == 0:
            return None
        x = self.acts.reshape(-1, self.acts.shape[-1])  # (N*T, d)
        f = torch.cat([sae.encode_raw(x[i : i + 8192]) for i in range(0, len(x), 8192)])
        x_hat = (f @ sae.W_dec + sae.b_dec) / sae.input_scale
        frequency = (f > 0).float().mean(0).cpu().numpy()
        residual_sq = (x - x_hat).pow(2).sum()
        total_sq = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
        return SAEEval(
            run=run,
            step=step,
            eval_split=self.split,
            eval_images=int(len(self.acts)),
            eval_tokens=int(len(x)),
            eval_fvu=fvu(x, x_hat, self.mean),
            eval_mse=float((x - x_hat).pow(2).sum(-1).mean() * sae.input_scale**2),
            eval_l0=float((f > 0).float().sum(-1).mean()),
            eval_never_fired_fraction=float((frequency == 0).mean()),
            eval_dense_fraction=float((frequency > 0.1).mean()),
            # against the eval set's own mean, as SAEBench computes it (FVU above uses the training mean)
            eval_explained_variance=float(1.0 - residual_sq / total_sq),
            eval_l2_ratio=float((x_hat.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)).mean()),
            eval_decoder_max_cosine=mean_max_cosine(sae.W_dec.detach()),
            density=density_histogram(frequency),
            theta=threshold_histogram(sae.firing_threshold.float().cpu().numpy()),
            **self._spliced(x_hat),
        )

    def _spliced(self, x_hat: torch.Tensor) -> dict[str, float]:
        """The classifier with the SAE spliced in, against clean and mean-ablated (none without model or labels)."""
        if self.model is None or not bool((self.labels >= 0).all()):
            return {}
        if self.logits_clean is None:
            self.logits_clean = self._logits(self.acts)
            # mean ablation erases the image, so CE recovered sits near 1 for any SAE: secondary, kept for reference
            self.ablated = fidelity(self.logits_clean, self._logits(self.mean.expand_as(self.acts)), self.labels)
        spliced, ablated = (
            fidelity(self.logits_clean, self._logits(x_hat.reshape(self.acts.shape)), self.labels),
            self.ablated,
        )
        return dict(
            dataclasses.asdict(spliced),
            ce_ablated=ablated.ce_sae,
            acc_ablated=ablated.acc_sae,
            ce_recovered=recovered(spliced.ce_clean, spliced.ce_sae, ablated.ce_sae),
            acc_recovered=recovered(-spliced.acc_clean, -spliced.acc_sae, -ablated.acc_sae),
            kl_recovered=1.0 - spliced.eval_kl / max(ablated.eval_kl, 1e-12),
        )
