"""ScaledAdam optimiser, the Eden learning-rate schedule and per-module learning rates.

The behaviour follows icefall's ``egs/librispeech/ASR/zipformer/optim.py`` so that training
trajectories (and checkpointed optimiser/scheduler states) agree with the reference:

* :class:`ScaledAdam` makes each update proportional to the root-mean-square (rms) value of
  the parameter tensor it changes, learns that rms separately (every ``size_update_period``
  steps), treats one-element parameters with plain Adam at ``lr * scalar_lr_scale`` clamped
  to ``[-scalar_max, scalar_max]``, and clips the whole group's gradient relative to the
  median gradient norm of recent steps.
* :class:`Eden` decays the learning rate with both the batch and the epoch count, after a
  linear warm-up.
* :func:`get_parameter_groups_with_lrs` turns ``lr_scale`` attributes on modules into
  parameter groups.

Parameters of one group that share dtype and shape are optimised together as one stacked
tensor (a "batch"); its optimiser state lives in ``self.state`` of the first parameter of
that batch, exactly where icefall keeps it, so ``state_dict()`` layouts are interchangeable.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

# Name given to parameters whose caller supplied no name.
_NO_NAME = "foo"
# Steps, besides multiples of clipping_update_period, at which the clipping threshold is
# re-estimated (from the norms seen so far) early in training.
_EARLY_CLIPPING_STEPS = (10, 20, 40)


@dataclass
class _Batch:
    """Parameters of one group that share dtype and shape, stacked along a new dim 0.

    Attributes:
        params: the real parameters, in group order.
        names: one name per parameter (``"foo"`` when unnamed).
        stacked: ``torch.stack(params)``; updated in place, then copied back.
        grad: the stacked gradients (zeros for parameters without a gradient).
        state: the optimiser state of the batch (that of ``params[0]``).
    """

    params: list[Tensor]
    names: list[str]
    stacked: Tensor
    grad: Tensor
    state: dict

    @property
    def is_scalar(self) -> bool:
        """True when every member of the batch has exactly one element."""
        return self.stacked.numel() == self.stacked.shape[0]


def _check_range(name: str, value: float, low: float, high: float | None = None) -> None:
    """Raise ValueError unless ``low <= value`` (and ``value < high`` when given)."""
    if not isinstance(value, (int, float)) or math.isnan(value) or value < low:
        raise ValueError(f"Invalid {name}: {value!r} (must be >= {low})")
    if high is not None and value >= high:
        raise ValueError(f"Invalid {name}: {value!r} (must be < {high})")


def _validate_hyperparameters(cfg: dict[str, Any]) -> None:
    """Validate ScaledAdam's constructor arguments.

    Args:
        cfg: the defaults dict built from the constructor arguments.

    Raises:
        ValueError: when any value is out of range.
    """
    _check_range("lr", cfg["lr"], 0.0)
    if cfg["clipping_scale"] is not None and not (
        isinstance(cfg["clipping_scale"], (int, float)) and cfg["clipping_scale"] > 0
    ):
        raise ValueError(f"Invalid clipping_scale: {cfg['clipping_scale']!r} (must be > 0)")
    betas = cfg["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair)")
    _check_range("beta1", betas[0], 0.0, 1.0)
    _check_range("beta2", betas[1], 0.0, 1.0)
    _check_range("scalar_lr_scale", cfg["scalar_lr_scale"], 0.0)
    _check_range("eps", cfg["eps"], 0.0)
    _check_range("param_min_rms", cfg["param_min_rms"], 0.0)
    _check_range("param_max_rms", cfg["param_max_rms"], 0.0)
    if cfg["param_max_rms"] < cfg["param_min_rms"]:
        raise ValueError(
            f"param_max_rms ({cfg['param_max_rms']}) < param_min_rms ({cfg['param_min_rms']})"
        )
    _check_range("scalar_max", cfg["scalar_max"], 0.0)
    for key in ("size_update_period", "clipping_update_period"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ValueError(f"Invalid {key}: {cfg[key]!r} (must be an int >= 1)")


def _normalize_param_groups(params: Any) -> list[dict]:
    """Turn the accepted ``params`` forms into a list of group dicts.

    Accepted forms: an iterable of tensors; an iterable of ``(name, tensor)`` pairs
    (e.g. ``model.named_parameters()``); a list of dicts, each with ``"params"`` or with
    ``"named_params"`` plus optional per-group options.

    Args:
        params: what the user passed to the optimiser.

    Returns:
        A list of fresh group dicts (the caller's dicts are not modified).

    Raises:
        ValueError: for an empty parameter list or a mixture of forms.
    """
    if isinstance(params, Tensor):
        params = [params]
    items = list(params)
    if len(items) == 0:
        raise ValueError("optimizer got an empty parameter list")
    n_dicts = sum(isinstance(x, dict) for x in items)
    if n_dicts == len(items):
        return [dict(g) for g in items]
    if n_dicts > 0:
        raise ValueError("params mixes parameter-group dicts with other items")
    n_pairs = sum(isinstance(x, tuple) for x in items)
    if n_pairs == len(items):
        return [{"named_params": items}]
    if n_pairs > 0:
        raise ValueError("params mixes (name, parameter) pairs with bare parameters")
    return [{"params": items}]


def _split_named_params(named_params: Any) -> tuple[list[str], list[Tensor]]:
    """Split an iterable of ``(name, tensor)`` pairs into names and tensors.

    Args:
        named_params: e.g. ``list(model.named_parameters())``.

    Returns:
        ``(names, tensors)``.

    Raises:
        ValueError: when an item is not a ``(str, Tensor)`` pair.
    """
    names, tensors = [], []
    for item in named_params:
        if not (
            isinstance(item, (tuple, list))
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], Tensor)
        ):
            raise ValueError(f"named_params entries must be (str, Tensor) pairs, got {item!r}")
        names.append(item[0])
        tensors.append(item[1])
    return names, tensors


class ScaledAdam(Optimizer):
    """Adam variant whose updates scale with each parameter tensor's rms value.

    Each non-scalar parameter tensor ``p`` is treated as ``p = u * exp(s)`` with a learned
    log-scale ``s``: the update of ``u`` is Adam's direction times ``lr * rms(p)``, and ``s``
    is learned with learning rate ``lr * scalar_lr_scale`` every ``size_update_period`` steps,
    keeping ``rms(p)`` within ``[param_min_rms, param_max_rms]`` (no further shrinking below
    the minimum). One-element parameters use Adam with learning rate ``lr * scalar_lr_scale``
    and are clamped to ``[-scalar_max, scalar_max]``. All updates share one momentum buffer
    ``delta`` (decayed by beta1).

    Args:
        params: parameters to optimise: an iterable of tensors, an iterable of
            ``(name, tensor)`` pairs, or a list of group dicts with either ``"params"``
            or ``"named_params"`` (a list of ``(name, tensor)``) and optional overrides.
            Names are used to report which parameter dominates when gradients are clipped.
        lr: learning rate (typically 0.03 to 0.045, decayed by a scheduler).
        clipping_scale: if not None, clip each group's gradient so that its norm (each
            non-scalar gradient weighted by its parameter's rms, scalar ones by
            ``scalar_lr_scale``) is at most ``clipping_scale`` times the median norm over
            the last ``clipping_update_period`` steps.
        betas: momentum constant and second-moment decay, both in ``[0, 1)``.
        scalar_lr_scale: learning-rate factor for scalar parameters and the log-scales.
        eps: epsilon for the Adam denominators.
        param_min_rms: lower limit on the rms used for (and learned for) a tensor.
        param_max_rms: upper limit on the rms learned for a tensor.
        scalar_max: absolute limit for one-element parameters.
        size_update_period: period, in steps, of the log-scale update.
        clipping_update_period: period, in steps, of the clipping-threshold update.
        host_clipping_checks: read each step's clipping factor on the host, as the
            reference does, to warn at once when it is below 0.1 and name the parameter
            that dominates the gradient norm. False keeps the factor on the device, so a
            step never waits for a GPU; heavy clipping is then reported (smallest factor,
            count) at the next threshold update, every ``clipping_update_period`` steps.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 3e-02,
        clipping_scale: float | None = None,
        betas: tuple[float, float] = (0.9, 0.98),
        scalar_lr_scale: float = 0.1,
        eps: float = 1.0e-08,
        param_min_rms: float = 1.0e-05,
        param_max_rms: float = 3.0,
        scalar_max: float = 10.0,
        size_update_period: int = 4,
        clipping_update_period: int = 100,
        host_clipping_checks: bool = True,
    ) -> None:
        self.host_clipping_checks = host_clipping_checks
        defaults = dict(
            lr=lr,
            clipping_scale=clipping_scale,
            betas=tuple(betas) if isinstance(betas, list) else betas,
            scalar_lr_scale=scalar_lr_scale,
            eps=eps,
            param_min_rms=param_min_rms,
            param_max_rms=param_max_rms,
            scalar_max=scalar_max,
            size_update_period=size_update_period,
            clipping_update_period=clipping_update_period,
        )
        _validate_hyperparameters(defaults)
        # Filled by add_param_group, one entry per group (torch calls it from __init__).
        self.parameters_names: list[list[str]] = []
        self._group_is_named: list[bool] = []
        super().__init__(_normalize_param_groups(params), defaults)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle/deepcopy state: torch's, plus the parameter names of each group."""
        state = super().__getstate__()
        state["parameters_names"] = self.parameters_names
        state["_group_is_named"] = self._group_is_named
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`__getstate__` (names default to "foo" when absent)."""
        super().__setstate__(state)
        # torch's load_state_dict() also calls this (without names): keep the ones we have.
        if not hasattr(self, "parameters_names"):
            self.parameters_names = [[_NO_NAME] * len(g["params"]) for g in self.param_groups]
        if not hasattr(self, "_group_is_named"):
            self._group_is_named = [False] * len(self.param_groups)

    @property
    def show_dominant_parameters(self) -> bool:
        """True when every group was given parameter names (needed to report them)."""
        return all(self._group_is_named)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group given with ``"params"`` or ``"named_params"``.

        Args:
            param_group: group dict; ``"named_params"`` is a list of ``(name, tensor)``.

        Raises:
            ValueError: if the group has both or neither of the two keys.
        """
        group = dict(param_group)
        has_named, has_plain = "named_params" in group, "params" in group
        if has_named == has_plain:
            raise ValueError("a parameter group needs exactly one of 'params' or 'named_params'")
        names: list[str] | None = None
        if has_named:
            names, group["params"] = _split_named_params(group.pop("named_params"))
        elif isinstance(group["params"], Tensor):
            group["params"] = [group["params"]]
        else:
            group["params"] = list(group["params"])
        super().add_param_group(group)
        n = len(self.param_groups[-1]["params"])
        self.parameters_names.append(names if names is not None else [_NO_NAME] * n)
        self._group_is_named.append(names is not None)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, names, named in zip(
            self.param_groups, self.parameters_names, self._group_is_named
        ):
            batches = self._make_batches(group["params"], names)
            if not batches:
                continue
            if len(batches[0].state) == 0:
                clip_factor = 1.0
            else:
                clip_factor = self._get_clipping_scale(group, batches, named)
            for b in batches:
                if len(b.state) == 0:
                    self._init_state(group, b.stacked, b.state)
                self._step_one_batch(group, b, clip_factor)
            for b in batches:
                for i, p in enumerate(b.params):
                    p.copy_(b.stacked[i])
        return loss

    def _make_batches(self, params: list[Tensor], names: list[str]) -> list[_Batch]:
        """Stack the parameters of a group that share dtype and shape.

        Batches are ordered by ``(dtype name, *shape)``; within a batch, parameters keep
        their group order, and the state used is that of the first one.

        Args:
            params: the group's parameters.
            names: one name per parameter.

        Returns:
            The list of batches.
        """
        if len(params) != len(names):
            raise RuntimeError("parameter names are out of step with parameter groups")
        by_key: dict[tuple, tuple[list[Tensor], list[str]]] = defaultdict(lambda: ([], []))
        for p, name in zip(params, names):
            members, member_names = by_key[(str(p.dtype), *p.shape)]
            members.append(p)
            member_names.append(name)
        batches = []
        for key in sorted(by_key):
            members, member_names = by_key[key]
            grads = []
            for p in members:
                if p.grad is not None and p.grad.is_sparse:
                    raise RuntimeError("ScaledAdam optimizer does not support sparse gradients")
                grads.append(torch.zeros_like(p) if p.grad is None else p.grad)
            batches.append(
                _Batch(
                    params=members,
                    names=member_names,
                    stacked=torch.stack(members),
                    grad=torch.stack(grads),
                    state=self.state[members[0]],
                )
            )
        return batches

    def _init_state(self, group: dict, p: Tensor, state: dict) -> None:
        """Create the state of a batch (dim 0 of ``p`` is the batch dim).

        Args:
            group: the parameter group (for ``size_update_period``).
            p: the stacked parameters.
            state: the empty state dict to fill.
        """
        state["step"] = 0
        # One momentum buffer holds the sum of every kind of update.
        state["delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if p.numel() > p.shape[0]:
            dims = list(range(1, p.ndim))
            param_rms = (p**2).mean(dim=dims, keepdim=True).sqrt()
            state["param_rms"] = param_rms
            state["scale_exp_avg_sq"] = torch.zeros_like(param_rms)
            state["scale_grads"] = torch.zeros(
                group["size_update_period"], *param_rms.shape, device=p.device, dtype=p.dtype
            )
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @staticmethod
    def _total_sumsq(batches: list[_Batch], scalar_lr_scale: float) -> Tensor:
        """Squared norm of the group's gradient, weighted as the updates are.

        Args:
            batches: the group's batches (state initialised).
            scalar_lr_scale: weight of one-element parameters' gradients.

        Returns:
            A 0-dim tensor.
        """
        tot = batches[0].stacked.new_zeros(())  # a fill on the device, no host copy
        for b in batches:
            if b.is_scalar:
                tot += (b.grad**2).sum() * (scalar_lr_scale**2)
            else:
                tot += ((b.grad * b.state["param_rms"]) ** 2).sum()
        return tot

    def _get_clipping_scale(self, group: dict, batches: list[_Batch], named: bool
                            ) -> float | Tensor:
        """Factor in ``[0, 1]`` by which this step's gradients are scaled.

        Records the gradient norm and, every ``clipping_update_period`` steps (and at steps
        10, 20, 40), sets the threshold to ``clipping_scale`` times the median recent norm
        (doubled at those early steps).

        Args:
            group: the parameter group.
            batches: its batches, with state initialised.
            named: whether the group's parameters have real names (for logging).

        Returns:
            The clipping factor (1.0 when no clipping applies): a float, or a 0-dim tensor
            on the device without ``host_clipping_checks``.
        """
        clipping_scale = group["clipping_scale"]
        first = batches[0].state
        step = first["step"]
        if clipping_scale is None or step == 0:
            return 1.0
        period = group["clipping_update_period"]
        tot_sumsq = self._total_sumsq(batches, group["scalar_lr_scale"])
        tot_norm = tot_sumsq.sqrt()
        if "model_norms" not in first:
            first["model_norms"] = torch.zeros(period, device=tot_norm.device)
        first["model_norms"][step % period] = tot_norm

        early_steps = [s for s in _EARLY_CLIPPING_STEPS if s < period]
        if step % period == 0 or step in early_steps:
            self._update_clipping_threshold(first, step, clipping_scale, step in early_steps)
        if "model_norm_threshold" not in first:
            return 1.0
        threshold = first["model_norm_threshold"]
        if not self.host_clipping_checks:
            return self._clipping_factor_on_device(first, threshold / (tot_norm + 1.0e-20))
        ratio = (threshold / (tot_norm + 1.0e-20)).item()
        # A NaN norm means a NaN gradient: drop it like an infinite one (ratio 0).
        ans = 0.0 if math.isnan(ratio) else min(1.0, ratio)
        if ans < 1.0:
            first["num_clipped"] += 1
        if ans < 0.1:
            logging.warning(f"Scaling gradients by {ans}, model_norm_threshold={threshold}")
            if named:
                self._log_dominant_parameter(batches, tot_sumsq, group["scalar_lr_scale"])
        if ans == 0.0:
            for b in batches:
                b.grad.zero_()
        return ans

    @staticmethod
    def _clipping_factor_on_device(state: dict, ratio: Tensor) -> Tensor:
        """min(1, ratio), 0 for a NaN ratio, as a 0-dim device tensor; counts the clipped
        steps and the smallest factor on the device (read at the threshold update)."""
        ans = torch.where(torch.isnan(ratio), torch.zeros_like(ratio), ratio.clamp(max=1.0))
        state["num_clipped_device"] = state.get("num_clipped_device", 0) + (ans < 1.0).int()
        state["min_clip_factor"] = torch.minimum(state.get("min_clip_factor", ans), ans)
        return ans

    @staticmethod
    def _update_clipping_threshold(
        state: dict, step: int, clipping_scale: float, early: bool
    ) -> None:
        """Set ``state["model_norm_threshold"]`` from the recorded gradient norms.

        Args:
            state: the first batch's state (holds ``model_norms``).
            step: the current step.
            clipping_scale: the threshold as a multiple of the median norm.
            early: True at the early re-estimation steps (10, 20, 40): only the ``step``
                largest recorded norms are used and the threshold is doubled.
        """
        sorted_norms = state["model_norms"].sort()[0].to("cpu")
        if early:
            sorted_norms = sorted_norms[-step:]
        n = sorted_norms.numel()
        quartiles = [sorted_norms[min(n - 1, (n // 4) * k)].item() for k in range(5)]
        median = quartiles[2]
        if not math.isfinite(median):
            raise RuntimeError("Too many grads were not finite")
        threshold = clipping_scale * median
        if early:
            threshold = threshold * 2.0
        state["model_norm_threshold"] = threshold
        num_clipped = state.get("num_clipped", 0) + int(state.pop("num_clipped_device", 0))
        percent_clipped = num_clipped * 100.0 / n
        state["num_clipped"] = 0
        smallest = state.pop("min_clip_factor", None)
        if smallest is not None and float(smallest) < 0.1:
            logging.warning(f"Scaled gradients by as little as {float(smallest):.3g} since the "
                            f"last threshold update (step {step})")
        quartile_text = " ".join(f"{q:.3e}" for q in quartiles)
        logging.warning(
            f"Clipping_scale={clipping_scale}, grad-norm quartiles {quartile_text}, "
            f"threshold={threshold:.3e}, percent-clipped={percent_clipped:.1f}"
        )

    @staticmethod
    def _log_dominant_parameter(
        batches: list[_Batch], tot_sumsq: Tensor, scalar_lr_scale: float
    ) -> None:
        """Log the parameter that contributes most to the (weighted) gradient norm.

        Args:
            batches: the group's batches.
            tot_sumsq: their total weighted squared gradient norm.
            scalar_lr_scale: weight of one-element parameters' gradients.
        """
        best: tuple | None = None
        for b in batches:
            if b.is_scalar:
                rms = torch.full(b.stacked.shape, scalar_lr_scale, device=b.grad.device)
            else:
                rms = b.state["param_rms"]
            sumsq = (b.grad * rms) ** 2
            if b.grad.ndim > 1:
                sumsq = sumsq.sum(dim=list(range(1, b.grad.ndim)))
            for name, s, r, g in zip(b.names, sumsq, rms, b.grad):
                proportion = (s / tot_sumsq).item()
                if best is None or proportion > best[0]:
                    best = (proportion, name, s, r, g)
        if best is None:
            return
        proportion, name, s, r, g = best
        logging.warning(
            f"Parameter dominating tot_sumsq {name} with proportion {proportion:.2f}, "
            f"where dominant_sumsq=(grad_sumsq*orig_rms_sq)={s.item():.3e}, "
            f"grad_sumsq={(g**2).sum().item():.3e}, orig_rms_sq={(r**2).max().item():.3e}"
        )

    def _step_one_batch(self, group: dict, b: _Batch, clip_factor: float | Tensor) -> None:
        """Update one batch of stacked parameters in place.

        Args:
            group: the parameter group.
            b: the batch (``b.stacked`` is modified).
            clip_factor: gradient-clipping factor from :meth:`_get_clipping_scale`.
        """
        p, grad, state = b.stacked, b.grad, b.state
        if isinstance(clip_factor, Tensor):  # 0 for a NaN norm: non-finite entries become 0
            grad.mul_(clip_factor).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        elif clip_factor != 1.0:
            grad *= clip_factor
        step = state["step"]
        period = group["size_update_period"]
        state["delta"].mul_(group["betas"][0])
        if not b.is_scalar:
            dims = list(range(1, p.ndim))
            scale_grads = state["scale_grads"]
            scale_grads[step % period] = (p * grad).sum(dim=dims, keepdim=True)
            if step % period == period - 1:
                state["param_rms"].copy_((p**2).mean(dim=dims, keepdim=True).sqrt())
                if step > 0:
                    self._size_update(group, scale_grads, p, state)
        if b.is_scalar:
            self._step_scalar(group, p, grad, state)
        else:
            self._step_tensor(group, p, grad, state)
        state["step"] = step + 1

    @staticmethod
    def _size_update(group: dict, scale_grads: Tensor, p: Tensor, state: dict) -> None:
        """Adam step on the log-scale of each tensor, added to the momentum buffer.

        Args:
            group: the parameter group.
            scale_grads: ``(size_update_period, batch, 1, ...)`` gradients w.r.t. the
                log-scale, one per step of the period.
            p: the stacked parameters.
            state: the batch state.
        """
        param_rms = state["param_rms"]
        beta1, beta2 = group["betas"]
        size_lr = group["lr"] * group["scalar_lr_scale"]
        period = scale_grads.shape[0]
        # Decay per update of the scale, which happens once every `period` steps.
        beta2_corr = beta2**period
        scale_exp_avg_sq = state["scale_exp_avg_sq"]
        scale_exp_avg_sq.mul_(beta2_corr).add_((scale_grads**2).mean(dim=0), alpha=1 - beta2_corr)
        size_step = (state["step"] + 1) // period
        bias_correction2 = 1 - beta2_corr**size_step
        denom = scale_exp_avg_sq.sqrt() + group["eps"]
        scale_step = -size_lr * (bias_correction2**0.5) * scale_grads.sum(dim=0) / denom
        # Never shrink a tensor whose rms is already below the minimum ...
        scale_step.masked_fill_(param_rms < group["param_min_rms"], 0.0)
        # ... and never let the rms grow beyond the maximum.
        scale_step = torch.minimum(scale_step, (group["param_max_rms"] - param_rms) / param_rms)
        state["delta"].add_(p * scale_step, alpha=1 - beta1)

    @staticmethod
    def _step_tensor(group: dict, p: Tensor, grad: Tensor, state: dict) -> None:
        """Core update for tensors with more than one element.

        Args:
            group: the parameter group.
            p: the stacked parameters (updated in place).
            grad: their (clipped) gradients.
            state: the batch state.
        """
        beta1, beta2 = group["betas"]
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        this_step = state["step"] - state.get("zero_step", 0)
        bias_correction2 = 1 - beta2 ** (this_step + 1)
        if bias_correction2 < 0.99:
            exp_avg_sq = exp_avg_sq * (1.0 / bias_correction2)  # not in place
        denom = exp_avg_sq.sqrt()
        denom += group["eps"]
        normalized = grad / denom
        alpha = -group["lr"] * (1 - beta1) * state["param_rms"].clamp(min=group["param_min_rms"])
        delta = state["delta"]
        delta.add_(normalized * alpha)
        p.add_(delta)

    @staticmethod
    def _step_scalar(group: dict, p: Tensor, grad: Tensor, state: dict) -> None:
        """Adam update for one-element parameters, clamped to ``scalar_max``.

        Args:
            group: the parameter group.
            p: the stacked scalars, shape ``(batch,)`` (updated in place).
            grad: their (clipped) gradients.
            state: the batch state.
        """
        beta1, beta2 = group["betas"]
        scalar_max = group["scalar_max"]
        lr = group["lr"] * group["scalar_lr_scale"]
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction2 = 1 - beta2 ** (state["step"] + 1)
        denom = (exp_avg_sq / bias_correction2).sqrt() + group["eps"]
        delta = state["delta"]
        delta.add_(grad / denom, alpha=-lr * (1 - beta1))
        p.clamp_(min=-scalar_max, max=scalar_max)
        p.add_(delta)


class LRScheduler:
    """Base class for schedules whose learning rate depends on the batch and the epoch.

    Subclasses implement :meth:`get_lr`. The base learning rate of each group is taken from
    ``group["base_lr"]`` (set to the group's ``lr`` when absent).

    Args:
        optimizer: the optimiser whose groups' ``lr`` is set.
        verbose: log every learning-rate change.

    Raises:
        TypeError: if ``optimizer`` is not a ``torch.optim.Optimizer``.
    """

    def __init__(self, optimizer: Optimizer, verbose: bool = False) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        self.verbose = verbose
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.base_lrs: list[float] = [group["base_lr"] for group in optimizer.param_groups]
        self.epoch: int | float = 0
        self.batch: int | float = 0
        self._last_lr: list[float] = [group["lr"] for group in optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Return the scheduler state (icefall's layout: base_lrs, epoch, batch).

        Returns:
            A dict that ``torch.load(..., weights_only=True)`` can read back.
        """
        return {"base_lrs": list(self.base_lrs), "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state returned by :meth:`state_dict`.

        Args:
            state_dict: dict with ``base_lrs``, ``epoch`` and ``batch``.

        Raises:
            ValueError: if a key is missing or ``base_lrs`` has the wrong length.
        """
        missing = {"base_lrs", "epoch", "batch"} - set(state_dict)
        if missing:
            raise ValueError(f"scheduler state is missing {sorted(missing)}")
        base_lrs = list(state_dict["base_lrs"])
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(
                f"scheduler state has {len(base_lrs)} base_lrs for "
                f"{len(self.optimizer.param_groups)} parameter groups"
            )
        self.base_lrs = base_lrs
        self.epoch = state_dict["epoch"]
        self.batch = state_dict["batch"]
        self._last_lr = self.get_lr()

    def get_last_lr(self) -> list[float]:
        """Return the learning rate of each group as last set by this scheduler.

        Returns:
            One float per parameter group.
        """
        return list(self._last_lr)

    def get_lr(self) -> list[float]:
        """Compute each group's learning rate from ``self.batch`` and ``self.epoch``.

        Returns:
            One float per parameter group.
        """
        raise NotImplementedError

    def step_batch(self, batch: int | None = None) -> None:
        """Advance the batch count by one, or set it (counted from the start of training).

        Args:
            batch: the total number of batches so far; None to add one.
        """
        self.batch = self.batch + 1 if batch is None else batch
        self._set_lrs()

    def step_epoch(self, epoch: int | None = None) -> None:
        """Advance the epoch count by one (end of epoch), or set it (start of epoch).

        Args:
            epoch: the epoch to set; None to add one.
        """
        self.epoch = self.epoch + 1 if epoch is None else epoch
        self._set_lrs()

    def _set_lrs(self) -> None:
        """Write :meth:`get_lr` into the optimiser's groups."""
        values = self.get_lr()
        if len(values) != len(self.optimizer.param_groups):
            raise RuntimeError("get_lr() returned the wrong number of learning rates")
        for i, (group, lr) in enumerate(zip(self.optimizer.param_groups, values)):
            group["lr"] = lr
            if self.verbose:
                logging.warning(
                    f"Epoch={self.epoch}, batch={self.batch}: adjusting learning rate"
                    f" of group {i} to {lr:.4e}."
                )
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class Eden(LRScheduler):
    """icefall's Eden schedule.

    ``lr = base_lr * ((batch**2 + lr_batches**2) / lr_batches**2) ** -0.25
    * ((epoch**2 + lr_epochs**2) / lr_epochs**2) ** -0.25 * warmup``, where ``warmup``
    rises linearly from ``warmup_start`` (batch 0) towards 1 and is exactly 1 from
    ``batch >= warmup_batches`` on. ``epoch`` may be any measure of data seen.

    Args:
        optimizer: the optimiser (base learning rate about 0.045 with ScaledAdam).
        lr_batches: batches after which the rate decays noticeably (e.g. 5000 or 7500).
        lr_epochs: epochs after which the rate decays noticeably (e.g. 3.5 to 6).
        warmup_batches: length of the warm-up, in batches.
        warmup_start: warm-up factor at batch 0, in ``[0, 1]``.
        verbose: log every learning-rate change.

    Raises:
        ValueError: for non-positive ``lr_batches``/``lr_epochs``, negative
            ``warmup_batches`` or ``warmup_start`` outside ``[0, 1]``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_batches: int | float,
        lr_epochs: int | float,
        warmup_batches: int | float = 500.0,
        warmup_start: float = 0.5,
        verbose: bool = False,
    ) -> None:
        if not lr_batches > 0:
            raise ValueError(f"lr_batches must be > 0, got {lr_batches}")
        if not lr_epochs > 0:
            raise ValueError(f"lr_epochs must be > 0, got {lr_epochs}")
        if not warmup_batches >= 0:
            raise ValueError(f"warmup_batches must be >= 0, got {warmup_batches}")
        if not 0.0 <= warmup_start <= 1.0:
            raise ValueError(f"warmup_start must be in [0, 1], got {warmup_start}")
        super().__init__(optimizer, verbose)
        self.lr_batches = lr_batches
        self.lr_epochs = lr_epochs
        self.warmup_batches = warmup_batches
        self.warmup_start = warmup_start

    def get_lr(self) -> list[float]:
        """Eden learning rate of every group at ``(self.batch, self.epoch)``.

        Returns:
            One float per parameter group.
        """
        batch_factor = ((self.batch**2 + self.lr_batches**2) / self.lr_batches**2) ** -0.25
        epoch_factor = ((self.epoch**2 + self.lr_epochs**2) / self.lr_epochs**2) ** -0.25
        if self.batch >= self.warmup_batches:
            warmup = 1.0
        else:
            warmup = self.warmup_start + (1.0 - self.warmup_start) * (
                self.batch / self.warmup_batches
            )
        factor = batch_factor * epoch_factor
        return [base_lr * factor * warmup for base_lr in self.base_lrs]


def get_parameter_groups_with_lrs(
    model: nn.Module,
    lr: float,
    include_names: bool = False,
    freeze_modules: Iterable[str] | None = None,
) -> list[dict]:
    """Group a model's parameters by learning rate, honouring modules' ``lr_scale``.

    A parameter's learning rate is ``lr`` times the ``lr_scale`` of every module on its
    path, the model itself included (modules without ``lr_scale`` count as 1.0), so that
    ``model.encoder.lr_scale = 0.5`` halves the rate of everything inside the encoder.

    Args:
        model: the model (a DistributedDataParallel wrapper works too).
        lr: the base learning rate.
        include_names: give groups as ``{"named_params": [(name, p), ...], "lr": ...}``
            instead of ``{"params": [p, ...], "lr": ...}``.
        freeze_modules: names of top-level sub-modules whose parameters are left out.

    Returns:
        One group dict per distinct learning rate, in order of first appearance.
    """
    frozen = set(freeze_modules or ())
    scales: dict[str, float] = {
        name: float(m.lr_scale) for name, m in model.named_modules() if hasattr(m, "lr_scale")
    }
    groups: dict[float, list] = defaultdict(list)
    for name, param in model.named_parameters():
        parts = name.split(".")
        top = parts[1] if parts[0] == "module" and len(parts) > 1 else parts[0]
        if top in frozen:
            logging.info(f"Remove {name} from parameters")
            continue
        # Same multiplication order as icefall, so equal products fall in one group.
        prefix = parts[0]
        cur_lr = lr * scales.get(prefix, 1.0)
        if prefix != "":
            cur_lr *= scales.get("", 1.0)
        for part in parts[1:]:
            prefix = f"{prefix}.{part}"
            cur_lr *= scales.get(prefix, 1.0)
        groups[cur_lr].append((name, param) if include_names else param)
    key = "named_params" if include_names else "params"
    return [{key: members, "lr": group_lr} for group_lr, members in groups.items()]
