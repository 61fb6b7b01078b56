"""LoRA (Hu et al., 2021) as icefall's ``zipformer_lora`` recipe has it.

A LoRA layer is a linear layer ``y = x W^T + b`` plus a trainable low-rank update
``x A^T B^T * alpha / r`` with ``lora_A: (r, I)`` (Kaiming-uniform, a = sqrt(5), as
``nn.Linear`` initialises its weight), ``lora_B: (O, r)`` (zeros, so a fresh layer computes
the base layer exactly) and ``alpha = 4``. In eval mode the update is merged into the weight
(``W += B @ A * alpha / r``), in train mode it is taken out again, as icefall's layer does
on ``train()``/``eval()``. Unlike icefall's, the state dict always holds the unmerged
weight, so a checkpoint written in either mode loads into a fresh model;
:func:`merged_state_dict` gives the base model's layout with LoRA folded in (for export).

:func:`add_lora` puts LoRA on the linear layers icefall's recipe puts it on:
``self_attn_weights.in_proj``, ``self_attn1.in_proj``, ``self_attn2.in_proj`` and each
feed-forward module's ``in_proj`` and ``out_proj`` (the latter as ``out_proj.l``, whose
weight and bias are ``out_proj.weight``/``out_proj.bias``, so the state dict lists both
names). LoRA layers are found by type (:class:`LoRALinear`), never by name.

Dimension legend: I = in_features, O = out_features, r = LoRA rank, ``...`` = any leading
dims (e.g. (T, N) in the encoder).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from icefall.zipformer.attention import RelPositionMultiheadAttentionWeights, SelfAttention
from icefall.zipformer.layer import FeedforwardModule
from icefall.zipformer.scaling import (
    ActivationDropoutAndLinear,
    Dropout2,
    Dropout3,
    SwooshL,
    SwooshR,
)

LORA_ALPHA = 4.0  # icefall's zipformer_lora: lora_alpha=4 in every LoRA layer


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A context with autocast off on ``device`` (nothing to switch off where autocast
    does not exist, e.g. on the meta device)."""
    available = getattr(torch.amp, "is_autocast_available",
                        lambda t: t in ("cpu", "cuda"))
    if available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class LoRALinear(nn.Linear):
    """A linear layer with a low-rank update; wraps an existing ``nn.Linear`` and shares
    its ``weight`` (O, I) and ``bias`` (O,) Parameters.

    As in icefall, the base weight gets ``requires_grad=False`` (the bias does not).
    While merged, the state dict holds the unmerged weight (a computed tensor, not the
    Parameter, even with ``keep_vars``), and loading writes the unmerged weight and then
    merges the loaded update.

    Args:
      base: the layer to wrap; r: the rank (>= 1); alpha: the update is scaled by alpha / r;
      dropout: dropout on the update's input (icefall: 0).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float = LORA_ALPHA,
                 dropout: float = 0.0) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: the weights are base's
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.r, self.lora_alpha, self.scaling = r, alpha, alpha / r
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0.0 else nn.Identity()
        self.weight.requires_grad_(False)
        self.merged = False
        self.train(base.training)

    def delta_weight(self) -> Tensor:
        """B @ A * alpha / r: (O, I) in the weight's dtype, computed in at least float32."""
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        with torch.no_grad(), _autocast_off(self.weight.device):
            delta = (self.lora_B.to(dtype) @ self.lora_A.to(dtype)) * self.scaling  # (O, I)
        return delta.to(self.weight.dtype)

    def merge(self) -> bool:
        """Adds the update into the weight (in place); returns True if it was unmerged."""
        if self.merged:
            return False
        with torch.no_grad():
            self.weight.add_(self.delta_weight())
        self.merged = True
        return True

    def unmerge(self) -> bool:
        """Takes the update out of the weight (in place); returns True if it was merged."""
        if not self.merged:
            return False
        with torch.no_grad():
            self.weight.sub_(self.delta_weight())
        self.merged = False
        return True

    def unmerged_weight(self) -> Tensor:
        """The base weight W (O, I), detached, whether merged or not (as unmerge leaves it)."""
        w = self.weight.detach()
        return w - self.delta_weight() if self.merged else w

    def merged_weight(self) -> Tensor:
        """W + B @ A * alpha / r (O, I), detached, whether merged or not (as merge leaves it)."""
        w = self.weight.detach()
        return w if self.merged else w + self.delta_weight()

    def train(self, mode: bool = True) -> LoRALinear:
        """Train mode unmerges the update, eval mode merges it (icefall's behaviour)."""
        super().train(mode)
        if mode:
            self.unmerge()
        else:
            self.merge()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., I) -> (..., O)."""
        out = nn.functional.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        delta = self.lora_dropout(x) @ self.lora_A.transpose(0, 1)  # (..., r)
        delta = delta @ self.lora_B.transpose(0, 1)  # (..., O)
        return out + delta * self.scaling

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, lora_alpha={self.lora_alpha}"

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str,
                            keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.merged:
            destination[prefix + "weight"] = self.unmerged_weight()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any) -> None:
        remerge = self.unmerge()  # load into the unmerged weight, then merge the new update
        super()._load_from_state_dict(state_dict, prefix, *args)
        if remerge:
            self.merge()


class LoRAActivationDropoutAndLinear(nn.Module):
    """Activation -> dropout -> :class:`LoRALinear` ``l``: icefall's
    ``ActivationDropoutAndLinear_lora``, built from an :class:`ActivationDropoutAndLinear`.

    ``weight`` (O, I) and ``bias`` (O,) are the same Parameters as ``l.weight``/``l.bias``.

    Args:
      base: the layer to wrap; r, alpha, dropout: as :class:`LoRALinear`.
    """

    def __init__(self, base: ActivationDropoutAndLinear, r: int, alpha: float = LORA_ALPHA,
                 dropout: float = 0.0) -> None:
        super().__init__()
        out_channels, in_channels = base.weight.shape
        linear = nn.Linear(in_channels, out_channels, bias=base.bias is not None,
                           device="meta")
        linear.weight = base.weight
        linear.register_parameter("bias", base.bias)
        linear.train(base.training)
        self.l = LoRALinear(linear, r, alpha, dropout)  # icefall's name
        self.weight = self.l.weight
        self.register_parameter("bias", self.l.bias)
        self.activation = SwooshL() if base.activation == "SwooshL" else SwooshR()
        shared = base.dropout_shared_dim
        self.dropout = (Dropout2(base.dropout_p) if shared is None
                        else Dropout3(base.dropout_p, shared))
        self.train(base.training)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., I) -> (..., O)."""
        return self.l(self.dropout(self.activation(x)))

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str,
                            keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.l.merged:
            destination[prefix + "weight"] = self.l.unmerged_weight()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any) -> None:
        # A base checkpoint has out_proj.weight/bias only: they are l's too. So ``l``, which
        # loads after this module, always writes the shared weight again (unmerged first,
        # merged after, if it was merged).
        for name in ("weight", "bias"):
            if prefix + name in state_dict and prefix + "l." + name not in state_dict:
                state_dict[prefix + "l." + name] = state_dict[prefix + name]
        super()._load_from_state_dict(state_dict, prefix, *args)


# (owner type, attribute, wrapped type, wrapper): where icefall's zipformer_lora puts LoRA.
_TARGETS: tuple[tuple[type[nn.Module], str, type[nn.Module], type[nn.Module]], ...] = (
    (RelPositionMultiheadAttentionWeights, "in_proj", nn.Linear, LoRALinear),
    (SelfAttention, "in_proj", nn.Linear, LoRALinear),
    (FeedforwardModule, "in_proj", nn.Linear, LoRALinear),
    (FeedforwardModule, "out_proj", ActivationDropoutAndLinear, LoRAActivationDropoutAndLinear),
)


def add_lora(model: nn.Module, r: int, alpha: float = LORA_ALPHA, dropout: float = 0.0) -> int:
    """Wraps every LoRA target of ``model`` (see the module docstring) in a fresh LoRA
    layer of rank ``r`` on the target's device and dtype; targets already wrapped are
    left alone. The model's state-dict key order is kept (wrappers replace in place).

    Returns:
      The number of layers wrapped.

    Raises:
      ValueError: if r < 1.
    """
    if r < 1:
        raise ValueError(f"--lora-r must be >= 1 to add LoRA, got {r}")
    added = 0
    for parent in list(model.modules()):
        for owner_type, attr, wrapped, wrapper in _TARGETS:
            child = getattr(parent, attr, None) if isinstance(parent, owner_type) else None
            if isinstance(child, wrapped) and not isinstance(child, LoRALinear):
                setattr(parent, attr, wrapper(child, r, alpha, dropout))
                added += 1
    return added


def lora_modules(model: nn.Module) -> list[LoRALinear]:
    """Every :class:`LoRALinear` in model, in module order."""
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every ``lora_A`` and ``lora_B``, in model.parameters() order."""
    ids = {id(p) for m in lora_modules(model) for p in (m.lora_A, m.lora_B)}
    return [p for p in model.parameters() if id(p) in ids]


def merge_lora(model: nn.Module) -> int:
    """Merges every LoRA update into its weight; returns how many were unmerged."""
    return sum(m.merge() for m in lora_modules(model))


def unmerge_lora(model: nn.Module) -> int:
    """Takes every LoRA update out of its weight; returns how many were merged."""
    return sum(m.unmerge() for m in lora_modules(model))


@contextlib.contextmanager
def lora_unmerged(model: nn.Module) -> Iterator[None]:
    """Context in which every LoRA layer is unmerged (e.g. to write lora_A/lora_B
    directly); the layers merged on entry are merged again, with the new values, on exit.
    """
    merged = [m for m in lora_modules(model) if m.unmerge()]
    try:
        yield
    finally:
        for m in merged:
            m.merge()


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict of the model without LoRA, with each update merged into its weight:
    what loads (strictly) into the base model to compute this model's function, as icefall's
    zipformer_lora export hands its merged weights to a model built with --use-lora 0.
    """
    sd = model.state_dict()
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, LoRAActivationDropoutAndLinear):
            sd[prefix + "weight"] = m.l.merged_weight()
            for key in [k for k in sd if k.startswith(prefix + "l.")]:
                del sd[key]
        elif isinstance(m, LoRALinear) and prefix + "lora_A" in sd:
            sd[prefix + "weight"] = m.merged_weight()
            del sd[prefix + "lora_A"], sd[prefix + "lora_B"]
    return sd


def lora_weight_aliases(model: nn.Module) -> dict[str, str]:
    """{alias: key} for the state-dict keys that name the same tensor as an earlier key
    (``....out_proj.l.weight`` -> ``....out_proj.weight``, and the biases). A base
    checkpoint has only the keys; ``load_state_dict`` fills each alias from its key, so a
    check of a base checkpoint against a LoRA model should allow these, and lora_A/lora_B,
    to be missing.
    """
    aliases = {}
    for name, m in model.named_modules():
        if isinstance(m, LoRAActivationDropoutAndLinear):
            prefix = f"{name}." if name else ""
            names = ("weight",) if m.bias is None else ("weight", "bias")
            aliases.update({f"{prefix}l.{n}": prefix + n for n in names})
    return aliases
