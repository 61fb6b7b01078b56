"""--inf-check: hooks that warn, naming the module or parameter, when an output or a
gradient is not finite.

They warn rather than stop, as icefall's do: with ``--use-fp16 1`` the gradient scaler
produces infinite gradients on purpose now and then (it then skips the step and lowers the
scale). Each check reads the device, so the hooks are for debugging, not for speed.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


def _tensors(value) -> Iterable[tuple[str, Tensor]]:
    """(suffix, tensor) for a tensor or the tensors of a (nested) tuple or list."""
    if isinstance(value, Tensor):
        yield "", value
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            for suffix, t in _tensors(v):
                yield f"[{i}]{suffix}", t


def _warn_if_not_finite(value, label: str) -> None:
    for suffix, t in _tensors(value):
        if t.is_floating_point() and not bool(torch.isfinite(t.detach().float().sum())):
            logging.warning(f"The sum of {label}{suffix} is not finite")


def register_inf_check_hooks(model: nn.Module) -> list[RemovableHandle]:
    """Adds forward hooks (module outputs), full backward hooks (gradients w.r.t. module
    outputs) and parameter hooks (gradients of trainable parameters) that log a warning
    naming what is not finite. Returns the handles (``handle.remove()`` undoes one)."""
    # Modules whose inputs need no gradient (the first layers) still report output grads.
    warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients")
    handles = []
    for name, module in model.named_modules():
        label = name or "<top-level>"
        handles.append(module.register_forward_hook(
            lambda _m, _i, out, label=label: _warn_if_not_finite(out, f"{label}.output")))
        handles.append(module.register_full_backward_hook(
            lambda _m, _gi, gout, label=label: _warn_if_not_finite(gout, f"{label}.grad")))
    for name, p in model.named_parameters():
        if p.requires_grad:
            handles.append(p.register_hook(
                lambda g, name=name: _warn_if_not_finite(g, f"{name}.param_grad")))
    logging.info(f"Registered {len(handles)} inf-check hooks")
    return handles
