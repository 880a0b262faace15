"""What every SAE architecture shares: the dictionary, the input scale, the decoder constraint and the hooks
the trainer calls (its sparsity parameters, its training step, its extra metrics).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from vitsae_tui.engine.config import SAETrainConfig


@dataclass(frozen=True)
class SAEShape:
    d_in: int
    d_sae: int


class SparseAutoencoder(nn.Module, abc.ABC):
    """What every architecture shares: tied-at-init unit-norm decoder rows, biases, and weights in the scaled input
    space (E||x||^2 = 1, the JumpReLU paper's); `input_scale` maps raw activations into it.

    Subclasses define `encode`, the architecture's name (`arch`, also its SAELens export) and `firing_threshold`:
    the per-feature activation below which a feature does not fire (what the index's histograms are relative to).
    """

    arch = ""
    saelens_arch = ""

    def __init__(self, d_in: int, d_sae: int, input_scale: float = 1.0, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(d_sae, d_in, generator=generator)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)  # (d_sae, d_in), rows unit-norm
        self.W_enc = nn.Parameter(w_dec.t().clone())  # (d_in, d_sae)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_scale", torch.tensor(float(input_scale)))

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg: SAETrainConfig, d_in: int, input_scale: float) -> SparseAutoencoder:
        """A freshly initialised SAE of the config's width and sparsity settings."""

    @abc.abstractmethod
    def training_step(self, cfg: SAETrainConfig, compute_dtype: torch.dtype, scratch: dict) -> TrainingStep:
        """The trainer's step for this SAE (`scratch`: buffers shared by a sweep's steps, which never overlap)."""

    def sparsity_parameters(self) -> list[nn.Parameter]:
        """Parameters trained at `theta_lr_scale` times the learning rate (JumpReLU's thresholds)."""
        return []

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    @abc.abstractmethod
    def firing_threshold(self) -> torch.Tensor: ...

    def pre_acts(self, x_scaled: torch.Tensor) -> torch.Tensor:
        return x_scaled @ self.W_enc + self.b_enc  # (B, d_sae)

    @abc.abstractmethod
    def encode(self, x_scaled: torch.Tensor) -> torch.Tensor: ...

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec  # (B, d_in)

    def encode_raw(self, x_raw: torch.Tensor) -> torch.Tensor:
        """Feature activations of raw (unscaled) hook activations."""
        return self.encode(x_raw * self.input_scale)

    def reconstruct_raw(self, x_raw: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode_raw(x_raw)) / self.input_scale

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the component of each decoder row's gradient parallel to the row (unit-norm constraint)."""
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
            self.W_dec.grad.sub_(parallel * self.W_dec)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def after_step(self) -> None:
        """Restore the constraints an optimizer step may break."""
        self.normalize_decoder()

    def raw_weights(self) -> dict[str, torch.Tensor]:
        """Weights that act on raw activations: the input scale folded into W_enc, W_dec and b_dec."""
        s = float(self.input_scale)
        return {
            "W_enc": (self.W_enc * s).detach().float().contiguous(),
            "b_enc": self.b_enc.detach().float().contiguous(),
            "W_dec": (self.W_dec / s).detach().float().contiguous(),
            "b_dec": (self.b_dec / s).detach().float().contiguous(),
        }


@dataclass(frozen=True)
class StepOutput:
    """What one training step measured, as tensors on the device (the trainer reads them only when it logs)."""

    mse: torch.Tensor
    """mean squared reconstruction error over the batch (scaled inputs)"""
    l0: torch.Tensor
    """mean number of features firing per token"""
    fired: torch.Tensor
    """(F,) whether each feature fired on any token of the batch"""
    in_window: torch.Tensor | None = None
    """JumpReLU: the share of token-feature pairs inside θ's gradient window (None without a learned threshold)"""
    theta_reached: torch.Tensor | None = None
    """JumpReLU: the share of features with any pair inside its window"""


@dataclass(frozen=True)
class WindowTotals:
    """The sums of a logging window's steps, over every rank (weighted by tokens)."""

    l0: float
    sq_err: float
    sq_dev: float
    tokens: float
    in_window: float
    theta_reached: float


class TrainingStep(abc.ABC):
    """One optimizer step's gradients for one architecture, as the trainer calls it."""

    @abc.abstractmethod
    def __call__(self, x: torch.Tensor, step: int, dead: torch.Tensor | None) -> StepOutput:
        """Set .grad on every parameter for the batch x (scaled inputs); `dead` is the (F,) mask of features silent
        for the dead window (None before a window has passed)."""

    def metrics(self, totals: WindowTotals, step: int) -> dict[str, float]:
        """The architecture's own entries of a metrics row (by metric key), from the window's sums."""
        return {}
