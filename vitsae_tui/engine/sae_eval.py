"""SAE evaluation on held-out tokens: FVU, L0, feature density, and the classifier with the SAE spliced in."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vitsae_tui.engine.activation_set import ActivationSet
from vitsae_tui.engine.sae import JumpReLUSAE

DENSITY_BINS = np.linspace(-7.0, 0.0, 29)  # log10 firing frequency, 0.25 decades per bin
MAX_EVAL_IMAGES = 1000


def heldout_images(n_images: int, every: int) -> np.ndarray:
    """Every `every`-th image (never trained on): spread over the set, so no class or source is left out."""
    return np.arange(every - 1, n_images, every)


def fvu(x: torch.Tensor, x_hat: torch.Tensor, mean: torch.Tensor) -> float:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mu||^2 with mu the per-dimension mean."""
    return float((x - x_hat).pow(2).sum() / (x - mean).pow(2).sum().clamp_min(1e-12))


def density_histogram(frequency: np.ndarray) -> dict[str, Any]:
    """Counts of features per log10-frequency bin, plus how many never fired."""
    fired = frequency[frequency > 0]
    counts, _ = np.histogram(np.log10(np.clip(fired, 10 ** DENSITY_BINS[0], 1.0)), bins=DENSITY_BINS)
    return {"log10_edges": DENSITY_BINS.tolist(), "counts": counts.tolist(), "never_fired": int((frequency == 0).sum())}


def recovered(clean: float, spliced: float, ablated: float) -> float:
    """How much of the gap between mean-ablation and the clean model the SAE closes (1: all of it)."""
    gap = ablated - clean
    return float((ablated - spliced) / gap) if abs(gap) > 1e-12 else math.nan


class Evaluator:
    """Holds the held-out activations (and the model after the hook, when available) and scores an SAE on them."""

    def __init__(self, store: ActivationSet, heldout_every: int, device: torch.device, model=None):
        ids = heldout_images(store.n_images, heldout_every)[:MAX_EVAL_IMAGES]
        self.image_ids = ids
        acts = (
            np.stack([store.image(int(i)) for i in ids])
            if len(ids)
            else np.empty((0, store.tokens_per_image, store.d_model))
        )
        self.acts = torch.from_numpy(acts.astype(np.float32)).to(device)  # (N, T, d) raw
        self.labels = torch.from_numpy(store.labels()[ids]).to(device)
        self.mean = torch.from_numpy(store.mean.astype(np.float32)).to(device)
        self.model = model
        self.hook = store.hook
        self.clean: dict[str, float] | None = None
        self.ablated: dict[str, float] | None = None

    def _classify(self, acts: torch.Tensor) -> dict[str, float]:
        logits = torch.cat(
            [self.model.run_from(self.hook, acts[i : i + 128]) for i in range(0, len(acts), 128)]
        ).float()
        return {
            "ce": float(F.cross_entropy(logits, self.labels)),
            "acc": float((logits.argmax(-1) == self.labels).float().mean()),
        }

    @torch.no_grad()
    def evaluate(self, sae: JumpReLUSAE) -> dict[str, Any]:
        if len(self.acts) == 0:
            return {}
        x = self.acts.reshape(-1, self.acts.shape[-1])  # (N*T, d)
        f = torch.cat([sae.encode_raw(x[i : i + 8192]) for i in range(0, len(x), 8192)])
        x_hat = (f @ sae.W_dec + sae.b_dec) / sae.input_scale
        frequency = (f > 0).float().mean(0).cpu().numpy()
        row: dict[str, Any] = {
            "eval_fvu": fvu(x, x_hat, self.mean),
            "eval_mse": float((x - x_hat).pow(2).sum(-1).mean() * sae.input_scale**2),
            "eval_l0": float((f > 0).float().sum(-1).mean()),
            "eval_never_fired_fraction": float((frequency == 0).mean()),
            "density": density_histogram(frequency),
            "eval_tokens": int(len(x)),
        }
        if self.model is not None and bool((self.labels >= 0).all()):
            if self.clean is None:
                self.clean = self._classify(self.acts)
                self.ablated = self._classify(self.mean.expand_as(self.acts))
            spliced = self._classify(x_hat.reshape(self.acts.shape))
            row.update(
                {
                    "ce_clean": self.clean["ce"],
                    "ce_sae": spliced["ce"],
                    "ce_ablated": self.ablated["ce"],
                    "acc_clean": self.clean["acc"],
                    "acc_sae": spliced["acc"],
                    "acc_ablated": self.ablated["acc"],
                    "ce_recovered": recovered(self.clean["ce"], spliced["ce"], self.ablated["ce"]),
                    "acc_recovered": recovered(-self.clean["acc"], -spliced["acc"], -self.ablated["acc"]),
                }
            )
        return row
