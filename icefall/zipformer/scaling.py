"""Building blocks of the Zipformer2 encoder (arXiv 2310.11230, section 3).

Activations (SwooshL, SwooshR), BiasNorm, schedules that follow the training batch
count (ScheduledFloat), gradient-only regularisers (Balancer, Whiten), the fused
activation-dropout-linear layer, and the chunk-causal depthwise convolution.

Every regulariser here is the identity in the forward value: it only edits gradients,
and only while its module is in training mode and its input requires grad. Frozen
modules (kept in eval mode by adapter fine-tuning) therefore skip them entirely.

Dimension legend: N = batch, T = frames, C = channels.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
from torch import Tensor, nn

# ---------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------


class PiecewiseLinear:
    """A piecewise-linear function of one float, given by (x, y) points in increasing x.

    Constant beyond the first and last points.
    """

    def __init__(self, *points: tuple[float, float]) -> None:
        if len(points) == 1 and isinstance(points[0], PiecewiseLinear):
            points = tuple(points[0].points)
        if not points:
            raise ValueError("PiecewiseLinear needs at least one point")
        self.points = [(float(x), float(y)) for x, y in points]
        xs = [x for x, _ in self.points]
        if any(b <= a for a, b in zip(xs, xs[1:])):
            raise ValueError(f"x values must increase: {xs}")

    def __call__(self, x: float) -> float:
        pts = self.points
        if x <= pts[0][0]:
            return pts[0][1]
        if x >= pts[-1][0]:
            return pts[-1][1]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if x0 <= x <= x1:
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        raise AssertionError("unreachable")

    def __repr__(self) -> str:
        return f"PiecewiseLinear({self.points})"


class ScheduledFloat(nn.Module):
    """A float that follows the training batch count.

    ``float(s)`` is the schedule at ``s.batch_count`` in training mode, and ``default``
    in eval mode or before a batch count is set (see :func:`set_batch_count`), so a
    model in eval mode computes a function that does not depend on training progress.
    """

    def __init__(self, *points: tuple[float, float], default: float = 0.0) -> None:
        super().__init__()
        self.schedule = PiecewiseLinear(*points)
        self.default = default
        self.batch_count: float | None = None

    def __float__(self) -> float:
        if self.batch_count is None or not self.training or _is_exporting():
            return float(self.default)
        return float(self.schedule(self.batch_count))

    def extra_repr(self) -> str:
        return f"schedule={self.schedule.points}, default={self.default}"


FloatLike = float | ScheduledFloat


def set_batch_count(model: nn.Module, batch_count: float) -> None:
    """Sets the batch count seen by every ScheduledFloat (and batch-aware module) in model."""
    BatchCounter(model).set(batch_count)


class BatchCounter:
    """:func:`set_batch_count` for one model, with its batch-aware modules found once (a
    training step then does not walk the whole model)."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for m in model.modules() if hasattr(m, "batch_count")]

    def set(self, batch_count: float) -> None:
        for m in self.modules:
            m.batch_count = batch_count


def _is_exporting() -> bool:
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


# ---------------------------------------------------------------------------
# Activations with memory-light autograd
# ---------------------------------------------------------------------------

# SwooshL(x) = log(1 + exp(x - 4)) - 0.08 x - 0.035
# SwooshR(x) = log(1 + exp(x - 1)) - 0.08 x - 0.313261687
# Both derivatives, sigmoid(x - offset) - 0.08, lie in [-0.08, 0.92]. On a GPU backward
# keeps them quantised to one byte per element (stochastic rounding, so unbiased; icefall's
# memory saving) instead of the float tensors plain autograd would keep. On the CPU, where
# memory is plentiful and the quantising passes cost more time than they save, backward
# keeps x and differentiates exactly.
_SWOOSH = {"SwooshL": (4.0, 0.035), "SwooshR": (1.0, 0.313261687)}
_DERIV_MIN, _DERIV_MAX = -0.08, 0.92


def swoosh(x: Tensor, kind: str) -> Tensor:
    """Forward value of SwooshL/SwooshR, numerically safe for large x (no autograd tricks)."""
    offset, const = _SWOOSH[kind]
    if _is_exporting():
        # ONNX has no logaddexp; log(1 + e^z) = relu(z) - log(sigmoid(|z|)) is exact for any
        # z and runs about 4x faster in ONNX Runtime than its Softplus kernel.
        z = x - offset
        return torch.relu(z) - torch.log(torch.sigmoid(z.abs())) - 0.08 * x - const
    # softplus(z) = log(1 + e^z), linear above z = 20 where the two agree in float32
    return torch.nn.functional.softplus(x - offset).sub_(x, alpha=0.08).sub_(const)


def _swoosh_deriv_u8(x: Tensor, offset: float) -> Tensor:
    """Quantised derivative sigmoid(x - offset) - 0.08 as uint8, stochastically rounded."""
    d = torch.sigmoid(x.float() - offset) - 0.08
    scaled = (d - _DERIV_MIN) * (255.0 / (_DERIV_MAX - _DERIV_MIN))
    return (scaled + torch.rand_like(scaled)).floor_().clamp_(0, 255).to(torch.uint8)


def _swoosh_saved(x: Tensor, offset: float) -> Tensor:
    """What backward keeps of x: the uint8 derivative on a GPU, x itself on the CPU."""
    return _swoosh_deriv_u8(x, offset) if x.is_cuda else x


def _swoosh_deriv(saved: Tensor, offset: float, dtype: torch.dtype) -> Tensor:
    """The derivative sigmoid(x - offset) - 0.08 from :func:`_swoosh_saved`'s tensor."""
    if saved.dtype == torch.uint8:
        return saved.to(dtype) * ((_DERIV_MAX - _DERIV_MIN) / 255.0) + _DERIV_MIN
    return torch.sigmoid(saved.float() - offset).sub_(0.08).to(dtype)


class _SwooshFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, kind: str) -> Tensor:
        ctx.offset, _ = _SWOOSH[kind]
        if x.requires_grad:
            ctx.save_for_backward(_swoosh_saved(x.detach(), ctx.offset))
        return swoosh(x.detach(), kind)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (saved,) = ctx.saved_tensors
        return _swoosh_deriv(saved, ctx.offset, grad.dtype).mul_(grad), None


class SwooshL(nn.Module):
    """SwooshL(x) = log(1 + exp(x - 4)) - 0.08 x - 0.035, elementwise."""

    def forward(self, x: Tensor) -> Tensor:
        if _is_exporting() or not x.requires_grad:
            return swoosh(x, "SwooshL")
        return _SwooshFunction.apply(x, "SwooshL")


class SwooshR(nn.Module):
    """SwooshR(x) = log(1 + exp(x - 1)) - 0.08 x - 0.313261687, elementwise."""

    def forward(self, x: Tensor) -> Tensor:
        if _is_exporting() or not x.requires_grad:
            return swoosh(x, "SwooshR")
        return _SwooshFunction.apply(x, "SwooshR")


# ---------------------------------------------------------------------------
# Fused activation -> dropout -> linear
# ---------------------------------------------------------------------------


class _ActDropoutLinearFunction(torch.autograd.Function):
    """y = linear(dropout(act(x)), W, b) keeping neither act(x) nor its dropped copy.

    Saved for backward: x when W needs a gradient (act(x) and its derivative are
    recomputed from it), otherwise what :func:`_swoosh_saved` keeps (on a GPU the
    quantised derivative of act, 1 byte per element: a frozen layer in adapter
    fine-tuning keeps a quarter of the memory).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, kind: str,
                mask: Tensor | None) -> Tensor:
        offset, _ = _SWOOSH[kind]
        h = swoosh(x, kind)
        if mask is not None:
            h = h * mask
        out = torch.nn.functional.linear(h, weight, bias)
        ctx.kind = kind
        ctx.has_bias = bias is not None
        need_x = weight.requires_grad
        deriv = _swoosh_saved(x, offset) if x.requires_grad and not need_x else None
        ctx.save_for_backward(x if need_x else None, deriv, weight, mask)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, deriv, weight, mask = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.matmul(grad_out, weight.to(grad_out.dtype))
            if mask is not None:
                grad_h = grad_h * mask
            if deriv is not None:
                grad_x = grad_h * _swoosh_deriv(deriv, _SWOOSH[ctx.kind][0], grad_h.dtype)
            else:
                offset, _ = _SWOOSH[ctx.kind]
                grad_x = grad_h * (torch.sigmoid(x.to(grad_h.dtype) - offset) - 0.08)
        if ctx.needs_input_grad[1]:
            h = swoosh(x, ctx.kind)
            if mask is not None:
                h = h * mask
            grad_w = torch.matmul(grad_out.reshape(-1, grad_out.shape[-1]).t(),
                                  h.reshape(-1, h.shape[-1]).to(grad_out.dtype))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(dim=0)
        return grad_x, grad_w, grad_b, None, None


class ActivationDropoutAndLinear(nn.Module):
    """SwooshL/SwooshR, then dropout (mask shared along ``dropout_shared_dim``), then Linear.

    Its parameters are ``weight`` (out, in) and ``bias`` (out,), as icefall's layout has them.

    Args:
      x: (..., in_channels)
    Returns:
      (..., out_channels)
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True,
                 activation: str = "SwooshL", dropout_p: FloatLike = 0.0,
                 dropout_shared_dim: int | None = -1, initial_scale: float = 1.0) -> None:
        super().__init__()
        if activation not in _SWOOSH:
            raise ValueError(f"activation must be one of {list(_SWOOSH)}, got {activation}")
        lin = ScaledLinear(in_channels, out_channels, bias=bias, initial_scale=initial_scale)
        self.weight = lin.weight
        self.register_parameter("bias", lin.bias)
        self.activation = activation
        self.dropout_p = dropout_p
        self.dropout_shared_dim = dropout_shared_dim

    def _dropout_mask(self, x: Tensor) -> Tensor | None:
        p = float(self.dropout_p)
        if not self.training or p == 0.0:
            return None
        shape = list(x.shape)
        if self.dropout_shared_dim is not None:
            shape[self.dropout_shared_dim] = 1
        keep = torch.rand(shape, device=x.device) > p
        return keep.to(x.dtype) * (1.0 / (1.0 - p))

    def forward(self, x: Tensor) -> Tensor:
        if (_is_exporting() or not torch.is_grad_enabled()
                or not (x.requires_grad or self.weight.requires_grad)):
            h = swoosh(x, self.activation)
            mask = self._dropout_mask(x)
            if mask is not None:
                h = h * mask
            return torch.nn.functional.linear(h, self.weight, self.bias)
        return _ActDropoutLinearFunction.apply(x, self.weight, self.bias, self.activation,
                                               self._dropout_mask(x))


# ---------------------------------------------------------------------------
# Normalisation and scaled initialisation
# ---------------------------------------------------------------------------


class BiasNorm(nn.Module):
    """Replacement for LayerNorm: x * exp(log_scale) / rms(x - bias) over the channel dim.

    The bias enters only the rms, so the output keeps the input's direction; in training
    log_scale is held inside [log_scale_min, log_scale_max] through its gradient.
    """

    def __init__(self, num_channels: int, channel_dim: int = -1, log_scale: float = 1.0,
                 log_scale_min: float = -1.5, log_scale_max: float = 1.5) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))
        self.bias = nn.Parameter(torch.empty(num_channels).normal_(mean=0.0, std=1e-4))
        self.log_scale_min = log_scale_min
        self.log_scale_max = log_scale_max

    def forward(self, x: Tensor) -> Tensor:
        dim = self.channel_dim % x.ndim
        bias = self.bias.reshape([-1] + [1] * (x.ndim - 1 - dim))
        log_scale = self.log_scale
        if self.training and not _is_exporting():
            log_scale = limit_param_value(log_scale, self.log_scale_min, self.log_scale_max)
        scales = torch.mean((x - bias) ** 2, dim=dim, keepdim=True) ** -0.5
        return x * (scales * log_scale.exp())


def ScaledLinear(*args, initial_scale: float = 1.0, **kwargs) -> nn.Linear:  # noqa: N802
    """nn.Linear with weights scaled by ``initial_scale`` and bias ~ U(+-0.1 initial_scale)."""
    return _scale_init(nn.Linear(*args, **kwargs), initial_scale)


def ScaledConv1d(*args, initial_scale: float = 1.0, **kwargs) -> nn.Conv1d:  # noqa: N802
    """nn.Conv1d with the initialisation of :func:`ScaledLinear`."""
    return _scale_init(nn.Conv1d(*args, **kwargs), initial_scale)


def ScaledConv2d(*args, initial_scale: float = 1.0, **kwargs) -> nn.Conv2d:  # noqa: N802
    """nn.Conv2d with the initialisation of :func:`ScaledLinear`."""
    return _scale_init(nn.Conv2d(*args, **kwargs), initial_scale)


def _scale_init(m: nn.Module, initial_scale: float) -> nn.Module:
    with torch.no_grad():
        m.weight.mul_(initial_scale)
        if m.bias is not None:
            nn.init.uniform_(m.bias, -0.1 * initial_scale, 0.1 * initial_scale)
    return m


# ---------------------------------------------------------------------------
# Gradient-only helpers
# ---------------------------------------------------------------------------


class _LimitParamValue(torch.autograd.Function):
    """Identity; flips gradients that would push x further outside [min, max]."""

    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        (x,) = ctx.saved_tensors
        g = g * torch.where((g > 0) & (x < ctx.lo), -1.0, 1.0)
        g = g * torch.where((g < 0) & (x > ctx.hi), -1.0, 1.0)
        return g, None, None


def limit_param_value(x: Tensor, min: float, max: float, prob: float = 0.6) -> Tensor:  # noqa: A002
    """With probability ``prob``, keeps gradient descent from moving x outside [min, max]."""
    if max < min:
        raise ValueError(f"limit_param_value: max {max} < min {min}")
    if x.requires_grad and random.random() < prob:
        return _LimitParamValue.apply(x, min, max)
    return x


class _WithAuxLoss(torch.autograd.Function):
    """Returns x; backward adds d(sum(aux))/d(aux) = 1 to aux's gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, aux: Tensor) -> Tensor:
        ctx.aux_shape = aux.shape
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g, torch.ones(ctx.aux_shape, dtype=g.dtype, device=g.device)


def penalize_abs_values_gt(x: Tensor, limit: float, penalty: float) -> Tensor:
    """Identity in value; adds ``penalty * |x|`` to the loss where |x| > limit."""
    if not x.requires_grad:
        return x
    over = (x.abs() > limit).to(x.dtype) * x.sign()
    return _WithAuxLoss.apply(x, penalty * over * x)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g * ctx.alpha, None


class ScaleGrad(nn.Module):
    """Identity in value; scales the gradient by ``alpha`` in training."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or _is_exporting() or not x.requires_grad:
            return x
        return _ScaleGrad.apply(x, self.alpha)


# ---------------------------------------------------------------------------
# Balancer: keeps per-channel sign balance and magnitude in range (gradient only)
# ---------------------------------------------------------------------------


def _abs_to_rms(a: float) -> float:
    # For a Gaussian, E|x| = a gives rms sqrt(pi / 2) * a.
    return math.sqrt(math.pi / 2.0) * a


def _proportion_positive_to_mean(p: float) -> float:
    # For x ~ N(m, 1), P(x > 0) = (1 + erf(m / sqrt 2)) / 2; the crude inverse of erf
    # 0.8139535143 * atanh(.) is what the reference uses to turn a proportion into
    # a limit on mean / stddev.
    z = 2.0 * p - 1.0
    eps = 1.0e-10
    atanh = (math.log(1.0 + z + eps) - math.log(1.0 - z + eps)) / 2.0
    return 0.8139535143 * atanh


def _balancer_gradient(x: Tensor, x_grad: Tensor, limits: tuple[float, ...],
                       channel_dim: int) -> Tensor:
    """x_grad plus |x_grad| times the scaled gradient of the balancer's loss.

    The loss of a channel, |m - clamp(m)| + |log(clamp(rms) / rms)| with m = mean / std,
    depends on x only through the channel's mean and mean square, so its gradient is
    affine in x per channel: dloss/dx = a + b x, with
      a = dL/dmean / n,  b = 2 dL/dsq_mean / n   (n: elements per channel).
    a, b and the rms of a + b x over the channel, (a + b mean)^2 + b^2 var, are per-channel
    scalars: two reductions and one fused pass over x instead of autograd through the
    loss (the reference's form, about 12 passes over x).

    Args:
      x, x_grad: (..., C, ...) with C at ``channel_dim``.
    Returns:
      the edited gradient, x_grad's shape and dtype.
    """
    min_mean, max_mean, min_rms, max_rms, grad_scale = limits
    dims = [d for d in range(x.ndim) if d != channel_dim]
    xf = x.float()
    mean = xf.mean(dim=dims, keepdim=True)  # (1, .., C, .., 1)
    n = x.numel() // mean.numel()
    var_raw = (xf - mean).square().mean(dim=dims, keepdim=True)  # two-pass: no cancellation
    sq_mean = var_raw + mean * mean
    std = var_raw.clamp(min=1.0e-20).sqrt()
    rms = sq_mean.clamp(min=1.0e-20).sqrt()
    m = mean / std
    d_m = torch.sign(m - m.clamp(min=min_mean, max=max_mean))  # d|m - clamp(m)| / dm
    d_rms = -torch.sign((rms.clamp(min=min_rms, max=max_rms) / rms).log()) / rms
    d_var = (-d_m * mean / (std * std)) / (2.0 * std) * (var_raw >= 1.0e-20)
    d_mean = d_m / std - 2.0 * mean * d_var  # var = sq_mean - mean^2
    d_sq = d_var + d_rms / (2.0 * rms) * (sq_mean >= 1.0e-20)
    a, b = d_mean / n, d_sq * (2.0 / n)
    grad_rms = ((a + b * mean).square() + b * b * var_raw).sqrt().clamp(min=1.0e-20)
    scale = grad_scale / grad_rms
    g = x_grad.float()
    return torch.addcmul(g, g.abs(), torch.addcmul(a * scale, b * scale, xf)).to(x_grad.dtype)


class _BalancerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, limits: tuple[float, ...], channel_dim: int) -> Tensor:
        ctx.save_for_backward(x)
        ctx.limits, ctx.channel_dim = limits, channel_dim
        return x.view_as(x)

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        (x,) = ctx.saved_tensors
        return _balancer_gradient(x, x_grad, ctx.limits, ctx.channel_dim), None, None


class Balancer(nn.Module):
    """Nudges each channel's proportion of positive values into [min_positive, max_positive]
    and its mean |x| into [min_abs, max_abs], by editing gradients (identity in value).

    Active with probability ``prob`` per call, in training mode, when x requires grad.
    """

    def __init__(self, num_channels: int, channel_dim: int, min_positive: FloatLike = 0.05,
                 max_positive: FloatLike = 0.95, min_abs: FloatLike = 0.2,
                 max_abs: FloatLike = 100.0, grad_scale: FloatLike = 0.04,
                 prob: FloatLike | None = None) -> None:
        super().__init__()
        if prob is None:
            prob = ScheduledFloat((0.0, 0.5), (8000.0, 0.125), default=0.4)
        self.prob = prob
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.min_positive, self.max_positive = min_positive, max_positive
        self.min_abs, self.max_abs = min_abs, max_abs
        self.grad_scale = grad_scale

    def forward(self, x: Tensor, channel_dim: int | None = None) -> Tensor:
        """x: (..., C, ...) with C at the module's channel_dim, or at ``channel_dim`` for a
        caller that has moved the channels (same statistics, same random draws)."""
        if not self.training or _is_exporting() or not x.requires_grad:
            return x
        if random.random() >= float(self.prob):
            return x
        channel_dim = self.channel_dim if channel_dim is None else channel_dim
        limits = (
            _proportion_positive_to_mean(float(self.min_positive)),
            _proportion_positive_to_mean(float(self.max_positive)),
            _abs_to_rms(float(self.min_abs)),
            _abs_to_rms(float(self.max_abs)),
            float(self.grad_scale),
        )
        return _BalancerFunction.apply(x, limits, channel_dim % x.ndim)


# ---------------------------------------------------------------------------
# Whiten: keeps the feature covariance from becoming too far from white (gradient only)
# ---------------------------------------------------------------------------


def whitening_metric(x: Tensor, num_groups: int) -> Tensor:
    """How far the covariance of x's channels is from a multiple of the identity.

    Args:
      x: (..., C) with C divisible by num_groups.
    Returns:
      scalar >= 1; equal to 1 exactly when each group's covariance is a multiple of I.
    """
    x = x.reshape(-1, x.shape[-1])
    frames, channels = x.shape
    per_group = channels // num_groups
    x = x.reshape(frames, num_groups, per_group).transpose(0, 1)  # (G, frames, per_group)
    x = x - x.mean(dim=1, keepdim=True)
    covar = torch.matmul(x.transpose(1, 2), x)  # (G, per_group, per_group)
    mean_diag = covar.diagonal(dim1=1, dim2=2).mean()
    mean_sq_diag = (covar ** 2).sum() / (num_groups * per_group)
    return mean_sq_diag / (mean_diag ** 2 + 1.0e-20)


class HostFeedback:
    """A module whose Python-side state follows a value computed on the device.

    Reading that value at once would wait for the device on every training step, so it is
    left pending: a training loop collects the pending values of all such modules with its
    own once-per-step read (:func:`take_host_feedback`, :func:`give_host_feedback`). A
    module whose value nobody collected reads it itself before its next use.
    """

    def __init__(self) -> None:
        self._pending: Tensor | None = None

    def set_pending(self, value: Tensor) -> None:
        self._pending = value.detach()

    def take_pending(self) -> Tensor | None:
        """The pending 0-dim value (and forget it), or None."""
        value, self._pending = self._pending, None
        return value

    def receive(self, value: float) -> None:
        """Updates the Python-side state from the value read on the host."""
        raise NotImplementedError

    def settle(self) -> None:
        """Reads a value nobody collected (waits for the device)."""
        value = self.take_pending()
        if value is not None:
            self.receive(float(value))


def take_host_feedback(modules: Sequence[HostFeedback]
                       ) -> tuple[list[HostFeedback], list[Tensor]]:
    """The modules with a pending value, and those values (0-dim tensors)."""
    taken = [(m, v) for m in modules if (v := m.take_pending()) is not None]
    return [m for m, _ in taken], [v for _, v in taken]


def give_host_feedback(modules: Sequence[HostFeedback], values: Sequence[float]) -> None:
    """Hands each module the value read for it (same order as :func:`take_host_feedback`)."""
    for m, v in zip(modules, values):
        m.receive(v)


class _WhitenFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, module: Whiten) -> Tensor:
        ctx.save_for_backward(x)
        ctx.module = module
        return x.view_as(x)

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        """Adds the penalty's gradient when the metric is over the limit. The decision is
        taken on the device (no read-back); the module learns it later (HostFeedback)."""
        (x,) = ctx.saved_tensors
        w: Whiten = ctx.module
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            xf = x.detach().float().requires_grad_(True)
            metric = whitening_metric(xf, w.num_groups)
            (penalty,) = torch.autograd.grad(metric, xf)
        over = metric.detach() >= float(w.whitening_limit)  # 0-dim bool, on the device
        w.set_pending(over)
        scale = float(w.grad_scale) * (x_grad.float().norm() / (penalty.norm() + 1.0e-20))
        whitened = x_grad + (penalty * scale).to(x_grad.dtype)
        return torch.where(over, whitened, x_grad), None


class Whiten(HostFeedback, nn.Module):
    """Adds a gradient that whitens x's channel covariance when :func:`whitening_metric`
    exceeds ``whitening_limit`` (identity in value). Checked with probability in ``prob``:
    the larger one after a check found the metric over the limit, else the smaller one.
    """

    def __init__(self, num_groups: int, whitening_limit: FloatLike,
                 prob: float | tuple[float, float], grad_scale: FloatLike) -> None:
        nn.Module.__init__(self)
        HostFeedback.__init__(self)
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        self.num_groups = num_groups
        self.whitening_limit = whitening_limit
        self.grad_scale = grad_scale
        self.min_prob, self.max_prob = (prob, prob) if isinstance(prob, float) else prob
        self.prob = self.max_prob

    def receive(self, value: float) -> None:
        """value: 1.0 when the last check found the metric over the limit, else 0.0."""
        self.prob = self.max_prob if value else self.min_prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or _is_exporting() or not x.requires_grad:
            return x
        self.settle()
        if random.random() > self.prob or float(self.grad_scale) == 0.0:
            return x
        return _WhitenFunction.apply(x, self)


# ---------------------------------------------------------------------------
# Dropout variants and misc
# ---------------------------------------------------------------------------


class Dropout2(nn.Module):
    """Dropout whose rate may be a ScheduledFloat."""

    def __init__(self, p: FloatLike) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.dropout(x, p=float(self.p), training=self.training)


class Dropout3(nn.Module):
    """Dropout with the mask shared along ``shared_dim`` (e.g. the time axis)."""

    def __init__(self, p: FloatLike, shared_dim: int) -> None:
        super().__init__()
        self.p = p
        self.shared_dim = shared_dim

    def forward(self, x: Tensor) -> Tensor:
        p = float(self.p)
        if not self.training or p == 0.0:
            return x
        shape = list(x.shape)
        shape[self.shared_dim] = 1
        keep = (torch.rand(shape, device=x.device) > p).to(x.dtype)
        return x * keep * (1.0 / (1.0 - p))


def convert_num_channels(x: Tensor, num_channels: int) -> Tensor:
    """Truncates or zero-pads the last dim of x to ``num_channels``."""
    if num_channels <= x.shape[-1]:
        return x[..., :num_channels]
    pad = list(x.shape)
    pad[-1] = num_channels - x.shape[-1]
    return torch.cat((x, torch.zeros(pad, dtype=x.dtype, device=x.device)), dim=-1)


# ---------------------------------------------------------------------------
# Chunk-causal depthwise convolution (for causal / streaming models)
# ---------------------------------------------------------------------------


class ChunkCausalDepthwiseConv1d(nn.Module):
    """Depthwise conv that sees no future frames beyond the current chunk.

    The output is a causal conv of half the kernel over the past plus a full-kernel conv
    inside each chunk, whose edge taps are rescaled by learned ``chunkwise_conv_scale``
    (2, C, kernel): row 0 near the chunk's left edge, row 1 near its right edge.

    Args:
      x: (N, C, T); chunk_size: frames per chunk, -1 for one chunk.
    Returns:
      (N, C, T)
    """

    def __init__(self, channels: int, kernel_size: int, initial_scale: float = 1.0,
                 bias: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.causal_conv = nn.Conv1d(channels, channels, (kernel_size + 1) // 2,
                                     groups=channels, padding=0, bias=True)
        self.chunkwise_conv = nn.Conv1d(channels, channels, kernel_size, groups=channels,
                                        padding=kernel_size // 2, bias=bias)
        self.chunkwise_conv_scale = nn.Parameter(torch.zeros(2, channels, kernel_size))
        with torch.no_grad():
            self.causal_conv.weight.mul_(initial_scale)
            self.chunkwise_conv.weight.mul_(initial_scale)
            if bias:
                nn.init.uniform_(self.causal_conv.bias, -0.1 * initial_scale,
                                 0.1 * initial_scale)

    def forward(self, x: Tensor, chunk_size: int = -1) -> Tensor:
        N, C, T = x.shape
        left_pad = self.kernel_size // 2
        if isinstance(T, Tensor) and chunk_size >= 0:
            # T is a traced size (export): keep "one chunk when T is shorter" in the graph.
            chunk_size = torch.clamp(T, max=chunk_size)
        elif chunk_size < 0 or chunk_size > T:
            chunk_size = T
        right_pad = -T % chunk_size
        x = nn.functional.pad(x, (left_pad, right_pad))
        x_causal = self.causal_conv(x[..., : left_pad + T])  # (N, C, T)
        x_chunk = x[..., left_pad:]
        num_chunks = x_chunk.shape[2] // chunk_size
        # (N, C, K, chunk) -> (N * K, C, chunk)
        x_chunk = x_chunk.reshape(N, C, num_chunks, chunk_size).permute(0, 2, 1, 3)
        x_chunk = self.chunkwise_conv(x_chunk.reshape(N * num_chunks, C, chunk_size))
        x_chunk = x_chunk * self._chunk_scale(chunk_size)
        # (N * K, C, chunk) -> (N, C, K * chunk)
        x_chunk = x_chunk.reshape(N, num_chunks, C, chunk_size).permute(0, 2, 1, 3)
        x_chunk = x_chunk.reshape(N, C, num_chunks * chunk_size)[..., :T]
        return x_chunk + x_causal

    def streaming_forward(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        """One chunk of a stream: the causal part continues from the cached frames, the
        chunkwise part sees the chunk alone (``forward`` with chunk_size = T, run on the
        whole stream, gives the same outputs).

        Args:
          x: (N, C, T) one chunk; cache: (N, C, kernel_size // 2) the frames before it.
        Returns:
          (N, C, T) and the updated (N, C, kernel_size // 2) cache.
        """
        left_pad = self.kernel_size // 2
        x = torch.cat((cache, x), dim=2)  # (N, C, left_pad + T)
        T = x.shape[2] - left_pad
        x_chunk = self.chunkwise_conv(x[..., left_pad:]) * self._chunk_scale(T)
        return x_chunk + self.causal_conv(x), x[..., T:]

    def _chunk_scale(self, chunk_size: int) -> Tensor:
        """(C, chunk_size) multiplier of the chunkwise conv's output."""
        left, right = self.chunkwise_conv_scale[0], self.chunkwise_conv_scale[1]
        # Zero-extend to at least chunk_size, then keep the chunk's first (left) or last
        # (right) chunk_size taps: truncates when chunk_size < kernel_size. No branch, so
        # a traced chunk_size (export) stays dynamic.
        pad = left.new_zeros(left.shape[0], chunk_size)
        left = torch.cat((left, pad), dim=-1)[:, :chunk_size]
        right = torch.cat((pad, right), dim=-1)
        right = right[:, right.shape[1] - chunk_size:]
        return 1.0 + (left + right)
