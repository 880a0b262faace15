"""JumpReLU sparse autoencoder (Rajamanoharan et al. 2024, "Jumping Ahead") and its straight-through estimators.

    z = x W_enc + b_enc          f = z * H(z - theta)          x_hat = f W_dec + b_dec
    loss = ||x - x_hat||^2 (sum over d, mean over batch) + lambda * sum_i H(z_i - theta_i) (mean over batch)

theta gets pseudo-derivatives through the rectangle kernel K(u) = 1[|u| < 1/2] with bandwidth eps:
    df/dtheta = -(theta / eps) K((z - theta) / eps)        dH/dtheta = -(1 / eps) K((z - theta) / eps)
f passes H(z - theta) to z; the L0 term sends nothing to z.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from vitsae_tui.engine import metrics
from vitsae_tui.engine.saes.base import SparseAutoencoder, StepOutput, TrainingStep, WindowTotals

if TYPE_CHECKING:
    from vitsae_tui.engine.config import SAETrainConfig


def rectangle(u: torch.Tensor) -> torch.Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class JumpReLU(torch.autograd.Function):
    """f = z * H(z - theta), with the paper's pseudo-derivative for theta."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_f: torch.Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad_f * (z > theta).to(grad_f.dtype)
        grad_theta = (-(theta / eps) * rectangle((z - theta) / eps) * grad_f).sum(0)
        return grad_z, grad_theta, None


class Step(torch.autograd.Function):
    """H(z - theta), whose pseudo-derivative reaches theta only."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = (-(1.0 / eps) * rectangle((z - theta) / eps) * grad_h).sum(0)
        return torch.zeros_like(z), grad_theta, None


class JumpReLUSAE(SparseAutoencoder):
    arch = "jumprelu"
    saelens_arch = "jumprelu"

    def __init__(self, d_in: int, d_sae: int, theta_init: float = 0.001, input_scale: float = 1.0, seed: int = 0):
        super().__init__(d_in, d_sae, input_scale, seed)
        self.threshold = nn.Parameter(torch.full((d_sae,), float(theta_init)))

    @classmethod
    def from_config(cls, cfg: SAETrainConfig, d_in: int, input_scale: float) -> JumpReLUSAE:
        return cls(d_in, d_in * cfg.expansion, cfg.theta_init, input_scale, cfg.seed)

    def training_step(self, cfg: SAETrainConfig, compute_dtype: torch.dtype, scratch: dict) -> JumpReLUTraining:
        return JumpReLUTraining(FusedStep(self, cfg.bandwidth, compute_dtype, scratch), cfg)

    def sparsity_parameters(self) -> list[nn.Parameter]:
        return [self.threshold]

    @property
    def firing_threshold(self) -> torch.Tensor:
        return self.threshold.detach()

    def encode(self, x_scaled: torch.Tensor) -> torch.Tensor:
        z = self.pre_acts(x_scaled)
        return z * (z > self.threshold).to(z.dtype)

    def loss(
        self,
        x_scaled: torch.Tensor,
        l0_coeff: float,
        bandwidth: float,
        dead: torch.Tensor | None = None,
        pre_act_coeff: float = 0.0,
    ) -> ReferenceLoss:
        """The training objective through the autograd Functions (the reference the fused step is tested against).

        `dead` (feature indices) get the pre-activation loss `pre_act_coeff * sum ReLU(theta - z) * |W_dec row|`."""
        z = self.pre_acts(x_scaled)
        f = JumpReLU.apply(z, self.threshold, bandwidth)
        x_hat = self.decode(f)
        mse = (x_hat - x_scaled).pow(2).sum(-1).mean()
        l0 = Step.apply(z, self.threshold, bandwidth).sum(-1).mean()
        loss = mse + l0_coeff * l0
        if dead is not None:
            below = (self.threshold[dead] - z[:, dead]).relu() * self.W_dec[dead].norm(dim=1)
            loss = loss + pre_act_coeff * below.sum(-1).mean()
        return ReferenceLoss(loss, mse, l0, f, x_hat)

    @torch.no_grad()
    def after_step(self) -> None:
        self.normalize_decoder()
        self.threshold.clamp_(min=1e-6)  # theta stays positive: a negative threshold would pass negative z

    def raw_weights(self) -> dict[str, torch.Tensor]:
        return {**super().raw_weights(), "threshold": self.threshold.detach().float().contiguous()}


@dataclass(frozen=True)
class ReferenceLoss:
    """The JumpReLU objective and its parts, through autograd (what the fused step is tested against)."""

    loss: torch.Tensor
    mse: torch.Tensor
    l0: torch.Tensor
    f: torch.Tensor
    x_hat: torch.Tensor


class FusedStep:
    """One training step's forward and hand-written backward with reused buffers.

    Same gradients as `JumpReLUSAE.loss(...).backward()` (tested), but five matmuls and a handful of in-place
    passes over the (B, d_sae) activations, with no autograd graph and no fresh 32 MiB temporaries per step.
    """

    def __init__(
        self,
        sae: JumpReLUSAE,
        bandwidth: float,
        compute_dtype: torch.dtype = torch.float32,
        buffers: dict | None = None,
    ):
        """`buffers`: scratch space to share with other steps that never run at the same time (a sweep's SAEs step
        one after another: one set of (B, F) buffers stays in cache instead of one per SAE)."""
        self.sae = sae
        self.bandwidth = bandwidth
        self.compute_dtype = compute_dtype
        self.buffers: dict = {} if buffers is None else buffers

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (name, shape, dtype, device)
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return buf

    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, l0_coeff: float, dead: torch.Tensor | None = None, pre_act_coeff: float = 0.0
    ) -> StepOutput:
        """Sets .grad on every parameter; returns what the step measured (the θ window statistics included).

        `dead` (feature indices, or None) get the pre-activation loss of `JumpReLUSAE.loss`."""
        sae, eps = self.sae, self.bandwidth
        B, F = x.shape[0], sae.d_sae
        dt, dev = self.compute_dtype, x.device
        w_dec = sae.W_dec if dt == torch.float32 else sae.W_dec.to(dt)
        xc = x if dt == torch.float32 else x.to(dt)
        theta = sae.threshold  # float32 always

        # the encoder in float32 even under bf16: bf16's grid near z ~ theta is coarser than the window eps, and
        # rounding x and W_enc moves z by half the window, so theta's gradient would be noise
        z = torch.addmm(sae.b_enc, x, sae.W_enc, out=self._buffer("z", (B, F), torch.float32, dev))  # (B, F)
        u = torch.sub(z, theta, out=self._buffer("u", (B, F), torch.float32, dev))
        # H(z - theta) as floats via sign: masked_fill_, heaviside, bool multiplies and bool->float copies are all
        # several times slower on CPU
        gate = torch.sign(u, out=self._buffer("gate", (B, F), torch.float32, dev)).clamp_(min=0)
        fired_count = gate.sum(0)  # (F,) tokens each feature fired on
        # pre-activation loss on dead features: decoder rows are unit norm, so d/dz = -c/B wherever z < theta
        below = None if dead is None else (u[:, dead] < 0).float().mul_(pre_act_coeff / B)  # (B, n_dead)
        # the rectangle window |z - theta| < eps/2 is very sparse: keep its coordinates, not a dense mask
        near = (u.abs_() < 0.5 * eps).nonzero()  # (n_near, 2)
        f = z.mul_(gate)  # z's buffer now holds f
        if dt != torch.float32:
            f = f.to(dt)
        x_hat = torch.addmm(sae.b_dec.to(dt), f, w_dec)  # (B, d_in)
        err = x_hat.float().sub_(x)  # (B, d_in)
        mse = err.pow(2).sum(1).mean()
        l0 = fired_count.sum() / B

        grad_x_hat = err.mul_(2.0 / B)  # (B, d_in)
        g = grad_x_hat.to(dt)
        sae.W_dec.grad = (f.t() @ g).float()  # (F, d_in)
        sae.b_dec.grad = grad_x_hat.sum(0)
        grad_f = torch.mm(g, w_dec.t(), out=self._buffer("grad_f", (B, F), dt, dev))  # (B, F)
        rows, cols = near[:, 0], near[:, 1]
        grad_theta = torch.zeros(F, dtype=torch.float32, device=dev)
        grad_theta.index_add_(0, cols, grad_f[rows, cols].float() * (-(theta[cols] / eps)))
        grad_theta.index_add_(0, cols, torch.full_like(cols, 1, dtype=torch.float32) * (-(l0_coeff / eps) / B))
        grad_z = grad_f.mul_(gate if dt == torch.float32 else gate.to(dt))  # H(z - theta) passes the gradient to z
        if below is not None:
            grad_theta.index_add_(0, dead, below.sum(0))
            grad_z.index_add_(1, dead, below.neg_().to(dt))
        sae.threshold.grad = grad_theta
        sae.W_enc.grad = (xc.t() @ grad_z).float()  # (d_in, F)
        sae.b_enc.grad = grad_z.sum(0, dtype=torch.float32)
        window_samples = torch.bincount(cols, minlength=F)  # (F,) tokens inside each feature's window
        return StepOutput(
            mse=mse,
            l0=l0,
            fired=fired_count > 0,
            in_window=window_samples.sum() / (B * F),
            theta_reached=(window_samples > 0).float().mean(),
        )


def l0_coeff_at(cfg: SAETrainConfig, step: int) -> float:
    """λ rises linearly from 0 over the first `l0_warmup_fraction` of the steps."""
    warmup = int(cfg.l0_warmup_fraction * cfg.total_steps)
    return cfg.l0_coeff * min(1.0, (step + 1) / warmup) if warmup > 0 else cfg.l0_coeff


class JumpReLUTraining(TrainingStep):
    """The fused step with λ's warm-up, the pre-activation loss on dead features and θ's learning statistics."""

    def __init__(self, fused: FusedStep, cfg: SAETrainConfig):
        self.fused, self.cfg = fused, cfg

    def __call__(self, x: torch.Tensor, step: int, dead: torch.Tensor | None) -> StepOutput:
        cfg = self.cfg
        dead_ids = dead.nonzero().squeeze(1) if cfg.pre_act_coeff and dead is not None else None
        return self.fused(x, l0_coeff_at(cfg, step), dead_ids, cfg.pre_act_coeff)

    def metrics(self, totals: WindowTotals, step: int) -> dict[str, float]:
        return {
            # how often theta learns: token-feature pairs inside the window, features with any such pair
            metrics.IN_WINDOW.key: totals.in_window / totals.tokens,
            metrics.THETA_REACHED.key: totals.theta_reached / totals.tokens,
            metrics.L0_COEFF.key: l0_coeff_at(self.cfg, step - 1),
        }
