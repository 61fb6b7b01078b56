"""Linear layers at decoding time on CPU: oneDNN's float32 GEMM where it is the faster one.

PyTorch computes a float32 ``F.linear`` on CPU with MKL. On AMD processors MKL takes its
AVX2 code paths, while oneDNN (shipped in every x86 PyTorch build as "mkldnn") uses
AVX-512 where the processor has it. On this project's 2-core AMD EPYC machines oneDNN
computes 16 rows x 512 -> 500 in 45 us against MKL's 68 us, 8 rows in 36 against 48,
and 3968 rows in 5.1 ms against 11.1 ms. With fewer rows MKL's paths are as fast or
faster inside a search, where the weights have left the cache since their last use:
modified beam search at batch 1 (4 rows a step) took 8% longer with oneDNN.
``bench/decode.py`` measures the searches both ways.

:func:`linear` sends a float32 CPU call without grad and with at least ``MIN_ROWS`` rows
to oneDNN's ``mkldnn::_linear_pointwise`` operator (the one TorchInductor emits for CPU
linear layers), and everything else -- training, ONNX export and tracing, GPUs, other
dtypes, fewer rows -- to the layer itself (``F.linear``). The operator is checked once
against ``F.linear``; if it is missing or disagrees, ``F.linear`` is used from then on.
``ICEFALL_ONEDNN_LINEAR=0`` in the environment, or :func:`use_onednn` (False), turns the
route off.

The two kernels add the products in different orders, so their results differ in the
last bits (a few parts in a million): compare outputs exactly only when both sides took
the same route.

Dimension legend: M = rows (all leading dimensions together), I = input features,
O = output features.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icefall.zipformer.scaling import _is_exporting

MIN_ROWS = 8  # below this MKL is as fast or faster inside a search (module docstring)

_enabled = os.environ.get("ICEFALL_ONEDNN_LINEAR", "1") != "0"
_works: bool | None = None  # None until the operator has been checked


def use_onednn(enabled: bool) -> bool:
    """Turns the oneDNN route on or off for this process; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def kernel_for(x: Tensor, layer: nn.Linear) -> str:
    """Which kernel :func:`linear` uses for ``layer(x)`` (x: (..., I)): "onednn" or
    "torch"."""
    if not _enabled or torch.jit.is_tracing() or x.numel() < MIN_ROWS * x.shape[-1]:
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
    rows = x.reshape(-1, x.size(-1)).contiguous()  # (M, I)
    out = torch.ops.mkldnn._linear_pointwise(rows, layer.weight, layer.bias, "none", [], "")
    return out.view(*x.shape[:-1], out.size(-1))  # (..., O)


def _onednn_works() -> bool:
    """Checks once that the operator exists and agrees with F.linear."""
    global _works
    if _works is None:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=g) for shape in ((8, 24), (20, 24), (20,)))
        try:
            with torch.inference_mode():
                out = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
            _works = bool(torch.allclose(out, F.linear(x, w, b), rtol=1e-4, atol=1e-5))
        except (AttributeError, RuntimeError, NotImplementedError):
            _works = False
    return _works
