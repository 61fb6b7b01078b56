"""Scaling primitives against naive float64 formulas and their defining identities."""

from __future__ import annotations

import random

import pytest
import torch

from icefall.zipformer.scaling import (
    ActivationDropoutAndLinear,
    Balancer,
    BiasNorm,
    ChunkCausalDepthwiseConv1d,
    PiecewiseLinear,
    ScheduledFloat,
    SwooshL,
    SwooshR,
    Whiten,
    _balancer_gradient,
    _swoosh_deriv,
    _swoosh_deriv_u8,
    give_host_feedback,
    limit_param_value,
    set_batch_count,
    take_host_feedback,
    whitening_metric,
)

QUANT_STEP = 1.0 / 255.0  # on a GPU derivatives are kept as uint8 over [-0.08, 0.92]


def naive_swoosh(x: torch.Tensor, offset: float, const: float) -> torch.Tensor:
    x = x.double()
    return torch.log1p(torch.exp(x - offset)) - 0.08 * x - const


@pytest.mark.parametrize("cls,offset,const", [(SwooshL, 4.0, 0.035),
                                              (SwooshR, 1.0, 0.313261687)])
def test_swoosh_value_and_gradient(cls, offset, const):
    """On the CPU the gradient is the exact derivative sigmoid(x - offset) - 0.08."""
    x = torch.linspace(-20, 20, 4001, requires_grad=True)
    y = cls()(x)
    assert torch.allclose(y.double(), naive_swoosh(x.detach(), offset, const), atol=1e-5)
    y.sum().backward()
    exact = torch.sigmoid(x.detach().double() - offset) - 0.08
    assert (x.grad.double() - exact).abs().max() <= 1e-6


@pytest.mark.parametrize("offset", [4.0, 1.0])
def test_gpu_kept_uint8_derivative_is_within_one_step_and_unbiased(offset):
    """What backward keeps on a GPU: the derivative in one byte, stochastically rounded."""
    x = torch.linspace(-20, 20, 4001)
    exact = torch.sigmoid(x.double() - offset) - 0.08
    draws = []
    for _ in range(200):
        kept = _swoosh_deriv_u8(x, offset)
        assert kept.dtype == torch.uint8
        draws.append(_swoosh_deriv(kept, offset, torch.float32).double())
        assert (draws[-1] - exact).abs().max() <= QUANT_STEP + 1e-6
    assert (torch.stack(draws).mean(0) - exact).abs().max() < 1.5e-3


def test_swoosh_is_finite_for_huge_inputs():
    x = torch.tensor([-1e4, 1e4, 88.0, 1e30])
    assert torch.isfinite(SwooshL()(x)).all() and torch.isfinite(SwooshR()(x)).all()


def _naive_linear(layer: ActivationDropoutAndLinear, x: torch.Tensor) -> torch.Tensor:
    offset, const = (4.0, 0.035) if layer.activation == "SwooshL" else (1.0, 0.313261687)
    h = naive_swoosh(x, offset, const)
    return h @ layer.weight.double().T + layer.bias.double()


@pytest.mark.parametrize("activation", ["SwooshL", "SwooshR"])
def test_activation_dropout_linear_matches_naive_with_trainable_weights(activation):
    layer = ActivationDropoutAndLinear(12, 5, activation=activation, dropout_p=0.0)
    x = torch.randn(7, 3, 12, requires_grad=True)
    x64 = x.detach().double().requires_grad_(True)
    w64 = layer.weight.detach().double().requires_grad_(True)
    b64 = layer.bias.detach().double().requires_grad_(True)
    offset, const = (4.0, 0.035) if activation == "SwooshL" else (1.0, 0.313261687)
    ref = naive_swoosh(x64, offset, const) @ w64.T + b64
    g = torch.randn_like(ref)
    ref.backward(g)
    out = layer(x)
    out.backward(g.float())
    assert torch.allclose(out.double(), ref, atol=1e-5)
    assert torch.allclose(layer.weight.grad.double(), w64.grad, atol=1e-4)
    assert torch.allclose(layer.bias.grad.double(), b64.grad, atol=1e-4)
    assert torch.allclose(x.grad.double(), x64.grad, atol=1e-4)  # recomputed exactly


def test_activation_dropout_linear_with_frozen_weights_gives_the_exact_input_gradient():
    """Frozen weights (adapter fine-tuning): on the CPU backward keeps x, not act(x), and
    the input gradient is exact (a GPU keeps the uint8 derivative, tested above)."""
    layer = ActivationDropoutAndLinear(12, 5, dropout_p=0.0)
    layer.requires_grad_(False)
    x = torch.randn(40, 12, requires_grad=True)
    g = torch.randn(40, 5)
    layer(x).backward(g)
    exact = ((g @ layer.weight) * (torch.sigmoid(x.detach() - 4.0) - 0.08))
    assert torch.allclose(x.grad, exact, atol=1e-5)


def test_activation_dropout_shares_mask_along_time():
    layer = ActivationDropoutAndLinear(64, 64, dropout_p=0.5, dropout_shared_dim=0).train()
    with torch.no_grad():
        layer.weight.copy_(torch.eye(64))
        layer.bias.zero_()
    x = torch.full((10, 4, 64), 10.0)
    out = layer(x)
    dropped = out == 0
    assert dropped.any() and (~dropped).any()
    assert (dropped == dropped[0:1]).all()  # same channels dropped at every time step
    kept = out[~dropped]
    assert torch.allclose(kept, torch.full_like(kept, 2.0 * float(naive_swoosh(
        torch.tensor(10.0), 4.0, 0.035))))


def test_bias_norm_formula():
    norm = BiasNorm(6)
    with torch.no_grad():
        norm.bias.copy_(torch.randn(6))
        norm.log_scale.fill_(0.3)
    x = torch.randn(4, 5, 6)
    rms = ((x - norm.bias) ** 2).mean(-1, keepdim=True).sqrt()
    assert torch.allclose(norm(x), x / rms * torch.exp(torch.tensor(0.3)), atol=1e-6)


def test_chunk_causal_conv_is_causal_per_chunk_and_full_conv_without_chunks():
    torch.manual_seed(0)
    conv = ChunkCausalDepthwiseConv1d(channels=3, kernel_size=7)
    x = torch.randn(2, 3, 32)
    y = conv(x, chunk_size=8)
    x2 = x.clone()
    x2[..., 16:] += torch.randn(2, 3, 16)
    y2 = conv(x2, chunk_size=8)
    assert torch.equal(y[..., :16], y2[..., :16])
    # chunk = whole sequence, zero edge scales: causal part + ordinary 'same' conv
    full = conv(x, chunk_size=-1)
    causal = torch.nn.functional.conv1d(torch.nn.functional.pad(x, (3, 0)),
                                        conv.causal_conv.weight, conv.causal_conv.bias,
                                        groups=3)
    same = torch.nn.functional.conv1d(x, conv.chunkwise_conv.weight, conv.chunkwise_conv.bias,
                                      padding=3, groups=3)
    assert torch.allclose(full, causal + same, atol=1e-6)


def test_scheduled_float_follows_batch_count_only_in_training():
    s = ScheduledFloat((0.0, 1.0), (100.0, 0.0), default=0.25)
    holder = torch.nn.Module()
    holder.s = s
    assert float(s) == 0.25  # no batch count yet
    set_batch_count(holder, 25.0)
    assert float(s) == pytest.approx(0.75)
    set_batch_count(holder, 1e6)
    assert float(s) == 0.0
    holder.eval()
    assert float(s) == 0.25
    assert PiecewiseLinear((0, 2), (10, 4))(5) == 3.0


def test_limit_param_value_flips_gradient_pushing_outside():
    random.seed(0)
    x = torch.tensor([0.0, 5.0, 0.5], requires_grad=True)
    for _ in range(50):  # applied with probability 0.6; try until it applies
        x.grad = None
        limit_param_value(x, 0.2, 1.0).backward(torch.tensor([1.0, -1.0, 1.0]))
        if x.grad[0] < 0:
            break
    assert x.grad.tolist() == [-1.0, 1.0, 1.0]


def test_balancer_is_identity_in_value_and_corrects_out_of_range_channels():
    random.seed(0)
    bal = Balancer(4, channel_dim=-1, min_positive=0.4, max_positive=0.6, min_abs=0.2,
                   max_abs=4.0, prob=1.0).train()
    x = (torch.randn(500, 4) + torch.tensor([3.0, 0.0, 0.0, 0.0])) * torch.tensor(
        [1.0, 1.0, 20.0, 1.0])
    x.requires_grad_(True)
    y = bal(x)
    assert torch.equal(y, x)
    g = torch.randn(500, 4)
    y.backward(g)
    extra = (x.grad - g)
    # Channel 0 is too positive: descent must lower it (extra gradient sums positive).
    assert extra[:, 0].sum() > 0
    # Channel 2 is too large: descent must shrink |x| (extra gradient along sign(x)).
    assert (extra[:, 2] * x.detach()[:, 2].sign()).sum() > 0
    # Channel 3 is within range: untouched.
    assert extra[:, 3].abs().max() < 1e-6


def naive_balancer_gradient(x: torch.Tensor, x_grad: torch.Tensor, limits: tuple,
                            channel_dim: int) -> torch.Tensor:
    """The balancer's edited gradient by float64 autograd through its loss."""
    min_mean, max_mean, min_rms, max_rms, grad_scale = limits
    dims = [d for d in range(x.ndim) if d != channel_dim]
    x = x.detach().double().requires_grad_(True)
    sq_mean = (x ** 2).mean(dim=dims, keepdim=True)
    mean = x.mean(dim=dims, keepdim=True)
    std = (sq_mean - mean * mean).clamp(min=1.0e-20).sqrt()
    rms = sq_mean.clamp(min=1.0e-20).sqrt()
    m = mean / std
    loss = ((m - m.clamp(min=min_mean, max=max_mean)).abs()
            + (rms.clamp(min=min_rms, max=max_rms) / rms).log().abs()).sum()
    (loss_grad,) = torch.autograd.grad(loss, x)
    grad_rms = (loss_grad ** 2).mean(dim=dims, keepdim=True).sqrt().clamp(min=1.0e-20)
    g = x_grad.double()
    return g + g.abs() * loss_grad * (grad_scale / grad_rms)


@pytest.mark.parametrize("shape,channel_dim", [((5, 24, 9, 7), 1), ((5, 9, 7, 24), 3),
                                               ((30, 3, 24), 2), ((24, 40), 0)])
def test_balancer_closed_form_gradient_matches_float64_autograd(shape, channel_dim):
    torch.manual_seed(0)
    channels = shape[channel_dim]
    view = [1] * len(shape)
    view[channel_dim] = channels
    # per-channel scales over 3 decades and offsets: channels inside and outside the
    # limits, some with |mean| >> std (where mean square minus mean^2 cancels)
    scale = torch.exp(torch.randn(channels) * 1.5).view(view)
    offset = (torch.randn(channels) * 2.0).view(view)
    x = torch.randn(shape) * scale + offset
    x.select(channel_dim, 0).zero_()  # an all-zero channel
    g = torch.randn(shape)
    limits = (-0.5, 0.5, 0.5, 2.0, 0.04)
    got = _balancer_gradient(x, g, limits, channel_dim)
    want = naive_balancer_gradient(x, g, limits, channel_dim)
    assert got.dtype == torch.float32
    assert (got.double() - want).abs().max() < 2e-5 * want.abs().max()
    # a half-precision gradient comes back in half precision, computed in float32
    x16, g16 = x.half(), g.half()
    got16 = _balancer_gradient(x16, g16, limits, channel_dim)
    want16 = naive_balancer_gradient(x16.float(), g16.float(), limits, channel_dim)
    assert got16.dtype == torch.float16
    assert (got16.double() - want16).abs().max() < 2e-3 * want16.abs().max()


def test_balancer_channel_dim_override_equals_the_moved_input():
    """forward(x, channel_dim=-1) on x moved channels-last gives the moved gradient."""
    random.seed(0)
    torch.manual_seed(0)
    bal = Balancer(6, channel_dim=1, min_positive=0.4, max_positive=0.6, min_abs=0.5,
                   max_abs=2.0, prob=1.0).train()
    x = (torch.randn(3, 6, 5, 4) * 3.0 + 1.0).requires_grad_(True)
    g = torch.randn(3, 6, 5, 4)
    bal(x).backward(g)
    x_last = x.detach().permute(0, 2, 3, 1).clone().requires_grad_(True)
    bal(x_last, channel_dim=-1).backward(g.permute(0, 2, 3, 1))
    assert torch.allclose(x_last.grad.permute(0, 3, 1, 2), x.grad, atol=1e-6)
    assert not torch.equal(x.grad, g)  # the balancer did edit it


def test_whitening_metric_is_one_for_white_and_dim_for_rank_one():
    torch.manual_seed(0)
    white = torch.randn(200000, 8)
    assert whitening_metric(white, 1) == pytest.approx(1.0, abs=0.01)
    rank1 = torch.randn(1000, 1) * torch.randn(1, 8)
    assert whitening_metric(rank1, 1) == pytest.approx(8.0, rel=1e-4)


def test_whiten_gradient_reduces_the_metric():
    random.seed(0)
    w = Whiten(num_groups=1, whitening_limit=1.5, prob=(1.0, 1.0), grad_scale=1.0).train()
    x = (torch.randn(300, 6) @ torch.randn(6, 6)).requires_grad_(True)
    y = w(x)
    assert torch.equal(y, x)
    y.backward(torch.zeros_like(x) + 1e-3)
    step = x.detach() - 1e-2 * (x.grad - 1e-3)
    assert whitening_metric(step, 1) < whitening_metric(x.detach(), 1)


def test_regularisers_are_skipped_in_eval_mode():
    bal = Balancer(4, channel_dim=-1, prob=1.0).eval()
    wh = Whiten(num_groups=1, whitening_limit=1.0, prob=(1.0, 1.0), grad_scale=1.0).eval()
    x = torch.randn(10, 4, requires_grad=True)
    assert bal(x) is x and wh(x) is x


def test_whiten_below_the_limit_leaves_the_gradient_and_reports_later():
    """The over-the-limit decision is taken on the device: below the limit the gradient is
    untouched (bit for bit) and the module learns the outcome from its pending value."""
    random.seed(0)
    w = Whiten(num_groups=1, whitening_limit=100.0, prob=(0.25, 1.0), grad_scale=1.0).train()
    x = torch.randn(300, 6, requires_grad=True)
    g = torch.randn(300, 6)
    w(x).backward(g)
    assert torch.equal(x.grad, g)
    modules, values = take_host_feedback([w])
    assert modules == [w] and float(values[0]) == 0.0
    give_host_feedback(modules, [float(v) for v in values])
    assert w.prob == 0.25  # below the limit: checked less often
    w.whitening_limit = 1.0
    w.prob = 1.0
    x.grad = None
    w(x).backward(g)
    assert not torch.equal(x.grad, g)
    w.settle()  # nobody collected the value: the module reads it itself
    assert w.prob == 1.0 and w.take_pending() is None
