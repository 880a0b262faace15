"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders") with the AuxK loss for dead latents.

    z = x W_enc + b_enc          f = TopK_k(ReLU(z)) per token          x_hat = f W_dec + b_dec
    loss = ||x - x_hat||^2 + alpha * ||e - e_hat||^2,  e = x - x_hat (detached),  e_hat = TopK_kaux(z over dead) W_dec

k_aux = d_in / 2 and alpha = 1/32 as in the paper; the AuxK term is scaled by min(1, n_dead / k_aux) as SAELens does.
`threshold` is not used by TopK's encode: it is a running estimate of the smallest kept activation, for the index's
activation histograms (BatchTopK, which subclasses this, does use it: see batchtopk.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from vitsae_tui.engine.saes.base import SparseAutoencoder, StepOutput, TrainingStep

if TYPE_CHECKING:
    from vitsae_tui.engine.config import SAETrainConfig

THRESHOLD_EMA = 0.01
"""rate of the running estimate of the smallest kept activation (SAELens's topk_threshold_lr)"""


class TopKSAE(SparseAutoencoder):
    arch = "topk"
    saelens_arch = "topk"

    def __init__(self, d_in: int, d_sae: int, k: int = 32, input_scale: float = 1.0, seed: int = 0):
        super().__init__(d_in, d_sae, input_scale, seed)
        self.register_buffer("k", torch.tensor(int(min(k, d_sae))))  # saved with the weights
        self.kept = int(self.k)  # the same k as a Python int: reading the buffer on a GPU would sync every step
        self.register_buffer("threshold", torch.zeros(d_sae))

    @classmethod
    def from_config(cls, cfg: SAETrainConfig, d_in: int, input_scale: float) -> TopKSAE:
        return cls(d_in, d_in * cfg.expansion, cfg.k, input_scale, cfg.seed)

    def training_step(self, cfg: SAETrainConfig, compute_dtype: torch.dtype, scratch: dict) -> TopKStep:
        return TopKStep(self, cfg.aux_k_coeff)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.kept = int(self.k)

    @property
    def firing_threshold(self) -> torch.Tensor:
        return self.threshold

    def encode(self, x_scaled: torch.Tensor) -> torch.Tensor:
        return self.select(self.pre_acts(x_scaled).relu_())

    def select(self, acts: torch.Tensor) -> torch.Tensor:
        """The training-time sparsification of ReLU(z): the k largest of each token."""
        top = acts.topk(self.kept, dim=-1, sorted=False)
        return torch.zeros_like(acts).scatter_(-1, top.indices, top.values)

    @torch.no_grad()
    def track_threshold(self, f: torch.Tensor) -> None:
        smallest = torch.where(f > 0, f, torch.inf).min().float()  # inf when nothing fired: then left unchanged
        moved = self.threshold * (1 - THRESHOLD_EMA) + THRESHOLD_EMA * smallest
        self.threshold.copy_(torch.where(torch.isfinite(smallest), moved, self.threshold))


def aux_k_loss(sae: SparseAutoencoder, z: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """How well the dead latents' top pre-activations reconstruct the residual error (their only gradient source)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return z.new_zeros(())
    k_aux = min(sae.d_in // 2, n_dead)
    candidates = z.masked_fill(~dead, float("-inf"))
    top = candidates.topk(k_aux, dim=-1, sorted=False)
    aux_f = torch.zeros_like(z).scatter_(-1, top.indices, top.values)
    e_hat = aux_f @ sae.W_dec
    return min(1.0, n_dead / (sae.d_in // 2)) * (e_hat - residual).pow(2).sum(-1).mean()


class TopKStep(TrainingStep):
    """One training step of a TopK or BatchTopK SAE through autograd; sets .grad on every parameter."""

    def __init__(self, sae: TopKSAE, aux_k_coeff: float):
        self.sae = sae
        self.aux_k_coeff = aux_k_coeff

    def __call__(self, x: torch.Tensor, step: int, dead: torch.Tensor | None) -> StepOutput:
        sae = self.sae
        for p in sae.parameters():
            p.grad = None
        with torch.enable_grad():
            z = sae.pre_acts(x)
            f = sae.select(z.relu())
            x_hat = sae.decode(f)
            err = x_hat - x
            mse = err.pow(2).sum(-1).mean()
            revive = self.aux_k_coeff > 0 and dead is not None
            aux = aux_k_loss(sae, z, -err.detach(), dead) if revive else mse.new_zeros(())
            (mse + self.aux_k_coeff * aux).backward()
        sae.track_threshold(f.detach())
        fired = (f > 0).detach()
        fired_count = fired.sum(0)
        return StepOutput(mse=mse.detach(), l0=fired_count.sum() / len(x), fired=fired_count > 0)
