"""--inf-check: hooks that report the first module whose output or gradient is not finite."""

from __future__ import annotations

import logging

import torch
from torch import nn


def _check(tensors, where: str) -> None:
    for i, t in enumerate(tensors if isinstance(tensors, (tuple, list)) else [tensors]):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            raise FloatingPointError(f"{where}: output {i} has non-finite values "
                                     f"(abs max {t.detach().abs().max().item()})")


def register_inf_check_hooks(model: nn.Module) -> list:
    """Adds forward hooks (outputs) and parameter hooks (gradients) that raise
    FloatingPointError naming the module or parameter. Returns the hook handles."""
    handles = []
    for name, module in model.named_modules():
        label = name or "model"
        handles.append(module.register_forward_hook(
            lambda _m, _i, out, label=label: _check(out, f"module {label}")))
    for name, p in model.named_parameters():
        if p.requires_grad:
            handles.append(p.register_hook(
                lambda g, name=name: _check(g, f"gradient of {name}")))
    logging.info(f"Registered {len(handles)} inf-check hooks")
    return handles
