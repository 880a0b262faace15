import numpy as np
import pytest
import torch

from vitsae_tui.engine.saes.eval import fvu
from vitsae_tui.engine.saes.jumprelu import FusedStep, JumpReLU, JumpReLUSAE, Step

EPS = 0.1


def window_case(seed=0):
    """Pre-activations with many entries inside the rectangle window around theta."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.rand(16, generator=g) * 0.5 + 0.2
    z = theta + (torch.rand(64, 16, generator=g) - 0.5) * 4 * EPS
    return z.double(), theta.double()


def test_jumprelu_pseudo_derivatives_match_the_formulas():
    z, theta = window_case()
    z.requires_grad_(True)
    theta.requires_grad_(True)
    grad_out = torch.randn_like(z)
    JumpReLU.apply(z, theta, EPS).backward(grad_out)
    kernel = ((z - theta).abs() / EPS < 0.5).double()
    assert 0 < kernel.mean() < 1
    assert torch.allclose(z.grad, grad_out * (z > theta).double())
    assert torch.allclose(theta.grad, (-(theta / EPS) * kernel * grad_out).sum(0))


def test_step_pseudo_derivative_reaches_only_theta():
    z, theta = window_case(1)
    z.requires_grad_(True)
    theta.requires_grad_(True)
    grad_out = torch.randn_like(z)
    Step.apply(z, theta, EPS).backward(grad_out)
    kernel = ((z - theta).abs() / EPS < 0.5).double()
    assert torch.count_nonzero(z.grad) == 0
    assert torch.allclose(theta.grad, (-(1 / EPS) * kernel * grad_out).sum(0))


def test_jumprelu_z_gradient_matches_finite_differences_away_from_the_jump():
    z, theta = window_case(2)
    h = 1e-6
    far = (z - theta).abs() > 10 * h
    numeric = (JumpReLU.apply(z + h, theta, EPS) - JumpReLU.apply(z - h, theta, EPS)) / (2 * h)
    assert torch.allclose(numeric[far], (z > theta).double()[far], atol=1e-6)


@pytest.mark.parametrize("with_dead", [False, True], ids=["alive", "pre-act loss on dead features"])
def test_fused_step_gradients_equal_autograd(with_dead):
    torch.manual_seed(0)
    sae = JumpReLUSAE(12, 48, theta_init=0.3, input_scale=1.0).double()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        sae.threshold[40:] = 5.0  # silent on every token
    x = torch.randn(256, 12, dtype=torch.float64)
    # the pre-activation loss on features that never fire and on two that fire on some tokens
    dead = torch.tensor([3, 17, *range(40, 48)]) if with_dead else None
    out = sae.loss(x, l0_coeff=0.7, bandwidth=EPS, dead=dead, pre_act_coeff=0.05)
    out.loss.backward()
    expected = {n: p.grad.clone() for n, p in sae.named_parameters()}
    for p in sae.parameters():
        p.grad = None
    fused = FusedStep(sae.float(), EPS)
    sae_f = sae
    result = fused(x.float(), l0_coeff=0.7, dead=dead, pre_act_coeff=0.05)
    if with_dead:
        assert (expected["threshold"][40:] > 0).all() and (expected["b_enc"][40:] < 0).all()  # theta down, z up
        assert 0 < (x.float() @ sae.W_enc[:, 3] + sae.b_enc[3] > sae.threshold[3]).float().mean() < 1
    assert result.mse == pytest.approx(out.mse.item(), rel=1e-5)
    assert result.l0 == pytest.approx(out.l0.item(), rel=1e-6)
    assert expected["threshold"].abs().sum() > 0, "the case must exercise the threshold gradient"
    # the norm's gradient is radial, which training projects out of W_dec's gradient (rows stay unit norm)
    w = sae_f.W_dec.detach().double()
    expected["W_dec"] -= (expected["W_dec"] * w).sum(1, keepdim=True) * w
    sae_f.W_dec.grad -= (sae_f.W_dec.grad * sae_f.W_dec).sum(1, keepdim=True) * sae_f.W_dec
    for name, param in sae_f.named_parameters():
        assert torch.allclose(param.grad.double(), expected[name], rtol=1e-4, atol=1e-5), name


def test_decoder_gradient_projection_and_normalisation_keep_rows_unit_norm():
    sae = JumpReLUSAE(8, 32)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32))
    assert torch.equal(sae.W_enc, sae.W_dec.t())
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.project_decoder_grad()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(32), atol=1e-6)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalize_decoder()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-6)


def test_fvu_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(500, 7))
    x_hat = x + rng.normal(0, 0.5, size=x.shape)
    direct = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    got = fvu(torch.from_numpy(x), torch.from_numpy(x_hat), torch.from_numpy(x.mean(0)))
    assert got == pytest.approx(direct, rel=1e-12)
    # not the reference's single global variance
    assert got != pytest.approx(((x - x_hat) ** 2).sum() / ((x - x.mean()) ** 2).sum(), rel=1e-3)


def test_raw_weights_fold_the_input_scale():
    torch.manual_seed(1)
    sae = JumpReLUSAE(10, 40, theta_init=0.05, input_scale=2.5)
    x_raw = torch.randn(64, 10) * 0.4
    raw = sae.raw_weights()
    z = x_raw @ raw["W_enc"] + raw["b_enc"]
    f = z * (z > raw["threshold"])
    assert torch.allclose(f, sae.encode(x_raw * 2.5), atol=1e-6)
    assert torch.allclose(f @ raw["W_dec"] + raw["b_dec"], sae.decode(f) / 2.5, atol=1e-6)


def test_bf16_theta_gradients_match_float32():
    """Under bf16 the threshold still learns: z - theta and the gate stay float32 (z in bf16 gave correlation 0.17)."""

    def theta_grads(dtype):
        torch.manual_seed(0)
        sae = JumpReLUSAE(64, 256, seed=0)
        x = torch.randn(16384, 64)  # E||x||^2 = d puts z ~ 1, where bf16's spacing (0.004-0.008) exceeds eps
        with torch.no_grad():
            sae.threshold.copy_(sae.pre_acts(x).quantile(0.8, dim=0))  # each feature fires on a fifth of the tokens
        FusedStep(sae, 0.001, dtype)(x, 0.01)
        return sae.threshold.grad.clone()

    fp32, bf16 = theta_grads(torch.float32), theta_grads(torch.bfloat16)
    assert np.corrcoef(fp32, bf16)[0, 1] >= 0.99
    assert (bf16 == 0).sum() <= (fp32 == 0).sum() + 2  # no threshold is frozen that float32 would move
