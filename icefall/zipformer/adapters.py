"""Adapters: small trainable modules inserted into a frozen model.

Adapters are found by type (:class:`Adapter`, :mod:`icefall.zipformer.adapter_kinds`), never
by parameter-name substrings. This module defines the ``residual`` kind (the
zipformer_adapter recipe's bottleneck) and the helpers that act on every kind: switch
adapters on and off at run time, freeze everything else, put them in training mode, and save
or load their weights on their own. LoRA (:mod:`icefall.zipformer.lora`) is a kind like any
other: its ``lora_A``/``lora_B`` train, the weights it wraps stay frozen.
Where adapters go (``--adapter-targets``) is :mod:`icefall.zipformer.placement`.

Dimension legend: C = embed_dim of the site, A = adapter (bottleneck) dim.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from icefall.zipformer.adapter_kinds import Adapter, OutputAdapter, register_adapter_kind
from icefall.zipformer.encoder import Zipformer2
from icefall.zipformer.layer import ADAPTER_SLOTS, Zipformer2EncoderLayer
from icefall.zipformer.lora import lora_unmerged
from icefall.zipformer.scaling import SwooshL


@register_adapter_kind("residual")
class ResidualAdapter(OutputAdapter):
    """x + out_proj(SwooshL(in_proj(x))), a residual bottleneck (Houlsby et al., 2019).

    ``out_proj`` starts at zero, so a fresh adapter changes nothing until trained.

    Args:
      embed_dim: C; bottleneck_dim: A.
    """

    def __init__(self, embed_dim: int, bottleneck_dim: int, zero_init: bool = True) -> None:
        if bottleneck_dim < 1:
            raise ValueError(f"--adapter-dim must be >= 1, got {bottleneck_dim}")
        super().__init__(embed_dim, bottleneck_dim)
        self.embed_dim = embed_dim
        self.bottleneck_dim = bottleneck_dim
        self.in_proj = nn.Linear(embed_dim, bottleneck_dim)
        self.activation = SwooshL()
        self.out_proj = nn.Linear(bottleneck_dim, embed_dim)
        if zero_init:
            nn.init.zeros_(self.out_proj.weight)
            nn.init.zeros_(self.out_proj.bias)

    def adapt(self, x: Tensor) -> Tensor:
        """x: (..., C) -> (..., C)."""
        return x + self.out_proj(self.activation(self.in_proj(x)))


def add_adapters(model: nn.Module, adapter_dim: int) -> int:
    """Fills every empty adapter slot of every Zipformer2 layer with a fresh
    :class:`ResidualAdapter` (on the layer's device and dtype).

    Returns:
      The number of adapters added.
    """
    added = 0
    for layer in model.modules():
        if not isinstance(layer, Zipformer2EncoderLayer):
            continue
        ref = layer.norm.bias
        for slot in ADAPTER_SLOTS:
            if getattr(layer, slot) is None:
                adapter = ResidualAdapter(layer.embed_dim, adapter_dim)
                setattr(layer, slot, adapter.to(device=ref.device, dtype=ref.dtype))
                added += 1
    return added


def remove_adapters(model: nn.Module) -> int:
    """Empties every encoder adapter slot that holds an :class:`Adapter`.

    Returns:
      The number of adapters removed.
    """
    removed = 0
    for layer in model.modules():
        if isinstance(layer, Zipformer2EncoderLayer):
            for slot in ADAPTER_SLOTS:
                if isinstance(getattr(layer, slot), Adapter):
                    setattr(layer, slot, None)
                    removed += 1
    return removed


def iter_adapters(model: nn.Module) -> Iterator[tuple[str, Adapter]]:
    """(qualified name, adapter) for every adapter in model (any kind), in module order."""
    for name, m in model.named_modules():
        if isinstance(m, Adapter):
            yield name, m


def has_adapters(model: nn.Module) -> bool:
    """True if model holds at least one adapter."""
    return next(iter_adapters(model), None) is not None


def set_adapters_enabled(model: nn.Module, enabled: bool) -> None:
    """Switches every adapter on or off; off, the model computes the base model exactly."""
    for _, adapter in iter_adapters(model):
        adapter.enabled = enabled


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Context in which every adapter is off; restores each adapter's previous state."""
    states = [(a, a.enabled) for _, a in iter_adapters(model)]
    try:
        for a, _ in states:
            a.enabled = False
        yield
    finally:
        for a, s in states:
            a.enabled = s


def _adapter_parameter_ids(model: nn.Module, min_rms_kinds_only: bool = False) -> set[int]:
    return {id(p) for _, a in iter_adapters(model)
            if a.uses_adapter_min_rms or not min_rms_kinds_only
            for _, p in a.adapter_parameters()}


def adapter_parameters(model: nn.Module, min_rms_kinds_only: bool = False
                       ) -> list[nn.Parameter]:
    """All adapter parameters (LoRA's lora_A/lora_B included), in model.parameters()
    order; with ``min_rms_kinds_only`` only those of kinds trained with the
    ``--adapter-min-rms`` floor (not LoRA's)."""
    ids = _adapter_parameter_ids(model, min_rms_kinds_only)
    return [p for p in model.parameters() if id(p) in ids]


def adapter_parameter_names(model: nn.Module) -> list[str]:
    """Qualified names of all adapter parameters, in model.named_parameters() order."""
    ids = _adapter_parameter_ids(model)
    return [n for n, p in model.named_parameters() if id(p) in ids]


def freeze_all_but_adapters(model: nn.Module) -> None:
    """requires_grad=True for adapter parameters, False for every other parameter."""
    names = set(adapter_parameter_names(model))
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)


def set_adapter_training(model: nn.Module, mode: bool = True) -> nn.Module:
    """Puts adapters (LoRA layers included) in train mode ``mode`` and every other module
    in eval mode.

    Frozen modules then behave as at inference: no dropout, no layer skipping, no
    training-time regularisers. A causal encoder still draws its chunk size and left
    context per batch from its lists while ``mode`` is true, as the base model's training
    did, so that the adapters learn every chunk configuration the model streams with
    (``model.eval()`` returns it to the first values). LoRA layers in train mode keep
    their update unmerged (it is what trains). The other modules' flags are set directly
    (as icefall does), so LoRA layers are not merged on the way.
    """
    for m in model.modules():
        m.training = False
    for _, adapter in iter_adapters(model):
        adapter.train(mode)
    for module in model.modules():
        if isinstance(module, Zipformer2):
            module.draw_chunk_sizes = mode
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter entries of model.state_dict(), detached and on the CPU."""
    names = adapter_parameter_names(model)
    sd = model.state_dict()
    return {n: sd[n].detach().cpu().clone() for n in names}


def load_adapter_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Loads adapter weights saved by :func:`adapter_state_dict`.

    Raises:
      ValueError: naming the first missing, unexpected or mis-shaped key.
    """
    own = dict(model.named_parameters())
    expected = set(adapter_parameter_names(model))
    for key in state:
        if key not in expected:
            raise ValueError(f"unexpected adapter key '{key}' (model has "
                             f"{len(expected)} adapter tensors; were adapters added?)")
    for key in sorted(expected):
        if key not in state:
            raise ValueError(f"missing adapter key '{key}'")
        if state[key].shape != own[key].shape:
            raise ValueError(f"adapter key '{key}': checkpoint shape "
                             f"{tuple(state[key].shape)} != model shape {tuple(own[key].shape)}")
    with torch.no_grad(), lora_unmerged(model):  # merged LoRA weights follow the new values
        for key, value in state.items():
            own[key].copy_(value)


@dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameter counts of a model."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (f"A total of {self.trainable} trainable parameters "
                f"({self.percent:.3f}% of the whole model)")


def count_parameters(model: nn.Module) -> ParameterCount:
    """Counts parameters with requires_grad=True and all parameters."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ParameterCount(trainable=trainable, total=total)
