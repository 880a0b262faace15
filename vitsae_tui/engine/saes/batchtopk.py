"""BatchTopK SAE (Bussmann et al. 2024): trained keeping the k x B largest ReLU(z) of a whole batch, so the number of
features per token varies with the token; used as a JumpReLU with one global threshold, the running estimate of the
smallest kept activation during training (as SAELens does). It exports to SAELens as `jumprelu`.
"""

from __future__ import annotations

import torch

from vitsae_tui.engine.saes.topk import TopKSAE


class BatchTopKSAE(TopKSAE):
    arch = "batchtopk"
    saelens_arch = "jumprelu"

    def encode(self, x_scaled: torch.Tensor) -> torch.Tensor:
        z = self.pre_acts(x_scaled)
        return z * (z > self.threshold).to(z.dtype)

    def select(self, acts: torch.Tensor) -> torch.Tensor:
        flat = acts.reshape(-1)
        top = flat.topk(min(self.kept * len(acts), flat.numel()), sorted=False)
        return torch.zeros_like(flat).scatter_(0, top.indices, top.values).view_as(acts)

    def raw_weights(self) -> dict[str, torch.Tensor]:
        return {**super().raw_weights(), "threshold": self.threshold.detach().float().contiguous()}
