"""The decoder's one-step path (used by every search) against its padded convolution.

``Decoder.one_step`` sums rows of per-position tables without grad and runs an einsum
with grad; both must equal the grouped Conv1d of the training path, and the cached tables
must follow any change of the weights.
"""

from __future__ import annotations

import pytest
import torch

from icefall.zipformer.decoder import Decoder
from icefall.zipformer.derived import cached_names

V, D = 11, 16


def _decoder(context_size: int, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(V, D, blank_id=0, context_size=context_size).eval()


def _contexts(K: int, n: int = 40, seed: int = 1) -> torch.Tensor:
    """(n, K) label ids in [-1, V), with -1 only as left padding (as the searches use)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, V, (n, K), generator=g)
    starts = torch.randint(0, K, (n,), generator=g)
    y[torch.arange(K) < starts[:, None]] = -1
    return y


def _by_convolution(decoder: Decoder, y: torch.Tensor) -> torch.Tensor:
    """(N, K) contexts -> (N, D) through the padded training path, last position."""
    with torch.no_grad():
        return decoder(y, need_pad=True)[:, -1]


@pytest.mark.parametrize("context_size", [1, 2, 3])
def test_one_step_tables_equal_the_convolution(context_size):
    decoder = _decoder(context_size)
    y = _contexts(context_size)
    with torch.no_grad():
        fast = decoder.one_step(y)
        via_forward = decoder(y, need_pad=False)[:, 0]
    torch.testing.assert_close(fast, _by_convolution(decoder, y), rtol=1e-5, atol=1e-6)
    assert torch.equal(via_forward, fast)
    tables = decoder.step_tables()
    assert tables.shape == (context_size, V + 1, D)
    assert not tables[:, V].any()  # the row of id -1 is zero


def test_one_step_with_grad_equals_tables_and_backpropagates():
    decoder = _decoder(2).train()
    y = _contexts(2)
    out = decoder.one_step(y)
    assert out.requires_grad
    out.square().sum().backward()
    assert decoder.embedding.weight.grad.abs().sum() > 0
    assert decoder.conv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(decoder.one_step(y), out.detach(), rtol=1e-5, atol=1e-6)


def test_step_tables_are_reused_until_the_weights_change():
    decoder = _decoder(2)
    y = _contexts(2)
    first = decoder.step_tables()
    assert decoder.step_tables() is first  # unchanged weights: the cached tables

    with torch.no_grad():
        decoder.embedding.weight.mul_(3.0)  # in place: the version counter moves
    assert decoder.step_tables() is not first
    with torch.no_grad():
        torch.testing.assert_close(decoder.one_step(y), _by_convolution(decoder, y),
                                   rtol=1e-5, atol=1e-6)

    decoder.load_state_dict(_decoder(2, seed=5).state_dict())  # copied into the weights
    with torch.no_grad():
        torch.testing.assert_close(decoder.one_step(y), _by_convolution(decoder, y),
                                   rtol=1e-5, atol=1e-6)

    decoder.double()  # new storage and dtype
    with torch.no_grad():
        out = decoder.one_step(y)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, _by_convolution(decoder, y), rtol=1e-12, atol=1e-12)


def test_one_step_works_on_inference_tensors_without_caching():
    with torch.inference_mode():
        decoder = _decoder(2)  # weights are inference tensors: no version counter
        y = _contexts(2)
        torch.testing.assert_close(decoder.one_step(y), decoder(y, need_pad=True)[:, -1],
                                   rtol=1e-5, atol=1e-6)
    assert cached_names(decoder) == []
