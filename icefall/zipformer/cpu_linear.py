"""Linear layers at decoding time on CPU: oneDNN's float32 GEMM where it is the faster one.

PyTorch computes a float32 ``F.linear`` on CPU with MKL. On AMD processors MKL takes its
AVX2 code paths, while oneDNN (shipped in every x86 PyTorch build as "mkldnn") uses
AVX-512 where the processor has it. oneDNN is fastest with the weight reordered once into
its own blocked layout ("packed", as TorchInductor does for frozen CPU models): the
packed copy is built on first use and kept until the weight changes
(:mod:`icefall.zipformer.derived`). On this project's 2-core AMD EPYC machines, in a loop
that mimics a greedy-search step at batch 16 (the joiner's 512 -> 500 output layer on 16
rows, the 512 -> 512 decoder projection on 2, gathers and updates between them), a step
took 107 us with packed oneDNN, 132 with oneDNN on the plain weights and 154 with MKL;
with 2, 3 and 4 rows in both layers 72, 75 and 80 us against MKL's 89, 118 and 131. With
one row MKL is faster (58 against 69 us), so that stays on ``F.linear``. oneDNN costs
about 12 us a call whatever the size (MKL 2 to 3). ``bench/decode.py`` measures the
searches both ways.

:func:`decoding_linear` makes the checks of :func:`kernel_for` once, for a search that
calls the same layer on every frame.

:func:`linear` sends a float32 CPU call without grad and with at least ``MIN_ROWS`` rows
to oneDNN's ``mkldnn::_linear_pointwise`` operator (the one TorchInductor emits for CPU
linear layers) with the packed weight, and everything else -- training, ONNX export and
tracing, GPUs, other dtypes, single rows -- to the layer itself (``F.linear``). The
operator is checked once against ``F.linear``; if it is missing or disagrees,
``F.linear`` is used from then on. ``ICEFALL_ONEDNN_LINEAR=0`` in the environment, or
:func:`use_onednn` (False), turns the route off.

The two kernels add the products in different orders, so their results differ in the
last bits (a few parts in a million): compare outputs exactly only when both sides took
the same route.

Dimension legend: M = rows (all leading dimensions together), I = input features,
O = output features.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icefall.zipformer.derived import derived
from icefall.zipformer.scaling import _is_exporting

MIN_ROWS = 2  # a single row is faster on MKL (module docstring)

_enabled = os.environ.get("ICEFALL_ONEDNN_LINEAR", "1") != "0"
_works: bool | None = None  # None until the operator has been checked


def use_onednn(enabled: bool) -> bool:
    """Turns the oneDNN route on or off for this process; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def plain_linear(layer: nn.Module) -> bool:
    """True if ``layer(x)`` is ``F.linear(x, layer.weight, layer.bias)``: a plain
    ``nn.Linear``, or a module saying so through ``plain_forward`` (a LoRA layer merged or
    switched off). A layer with an output adapter, or unmerged LoRA, is called as a module.
    """
    plain = getattr(layer, "plain_forward", None)
    return type(layer) is nn.Linear if plain is None else bool(plain)


def kernel_for(x: Tensor, layer: nn.Linear) -> str:
    """Which kernel :func:`linear` uses for ``layer(x)`` (x: (..., I)): "onednn" or
    "torch"."""
    if not _enabled or torch.jit.is_tracing() or _few_rows(x) or not plain_linear(layer):
        return "torch"  # the cheap tests first: a batch-1 search asks on every frame
    if (x.dtype != torch.float32 or layer.weight.dtype != torch.float32
            or x.device.type != "cpu" or torch.is_grad_enabled()):
        return "torch"
    if x.shape[-1] == 0 or _is_exporting() or not _onednn_works():
        return "torch"
    return "onednn"


def linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """``layer(x)`` through the faster kernel (see the module docstring).

    Args:
      x: (..., I) input.
      layer: an ``nn.Linear`` with weight (O, I) and optional bias (O,).
    Returns:
      (..., O), equal to ``F.linear(x, layer.weight, layer.bias)`` up to float rounding.
    """
    if kernel_for(x, layer) == "torch":
        return layer(x)
    return _onednn_linear(x, packed_weight(layer), layer.bias)


def decoding_linear(layer: nn.Linear) -> Callable[[Tensor], Tensor]:
    """``layer`` as a function for a search, with the checks of :func:`kernel_for` done
    once: a search calls its layers on every frame, without grad, with fixed weights.

    Call it inside the search (grad off). Hooks registered on ``layer`` are not run.

    Args:
      layer: an ``nn.Linear`` with weight (O, I) and optional bias (O,).
    Returns:
      A function (..., I) -> (..., O) equal to ``linear(x, layer)`` for inputs of the
      layer's dtype and device, valid while the layer's weights stay unchanged (the layer
      itself when it is not a plain linear layer, :func:`plain_linear`).
    """
    if not plain_linear(layer):
        return layer
    weight, bias = layer.weight, layer.bias
    probe = weight.new_empty(MIN_ROWS, weight.size(1))  # (M, I) as the search's inputs
    if kernel_for(probe, layer) == "torch":
        return lambda x: F.linear(x, weight, bias)
    packed = packed_weight(layer)

    def apply(x: Tensor) -> Tensor:
        if _few_rows(x):
            return F.linear(x, weight, bias)
        return _onednn_linear(x, packed, bias)

    return apply


def _few_rows(x: Tensor) -> bool:
    """True if (..., I) input x has fewer than MIN_ROWS rows (the first, cheap test)."""
    return x.numel() < MIN_ROWS * x.size(-1)


def packed_weight(layer: nn.Linear) -> Tensor:
    """oneDNN's packed copy of ``layer.weight`` (O, I), built once per weight state.

    A weight created under ``torch.inference_mode`` has no version counter to key a cache
    on; it is used as it is (the operator takes plain weights too, a little slower).
    """
    if layer.weight.is_inference():
        return layer.weight
    return derived(layer, "onednn_packed_weight", (layer.weight,),
                   lambda: _pack(layer.weight.detach()))


def _pack(weight: Tensor) -> Tensor:
    """(O, I) float32 weight -> the same matrix in oneDNN's blocked layout (opaque)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)


def _onednn_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """(..., I) input, packed (O, I) weight -> (..., O)."""
    if x.dim() == 2 and x.is_contiguous():  # a search's usual input: no reshaping
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    rows = x.reshape(-1, x.size(-1)).contiguous()  # (M, I)
    out = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")
    return out.view(*x.shape[:-1], out.size(-1))  # (..., O)


def _onednn_works() -> bool:
    """Checks once that the operator exists and agrees with F.linear."""
    global _works
    if _works is None:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=g) for shape in ((8, 24), (20, 24), (20,)))
        try:
            with torch.inference_mode():
                out = _onednn_linear(x, _pack(w), b)
            _works = bool(torch.allclose(out, F.linear(x, w, b), rtol=1e-4, atol=1e-5))
        except (AttributeError, RuntimeError, NotImplementedError):
            _works = False
    return _works
