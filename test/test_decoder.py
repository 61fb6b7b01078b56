"""The decoder's one-step call (``need_pad=False``, as the searches make it) against its
padded whole-sequence path (as training runs it).

Dimension legend: N = contexts, K = context size, V = vocab size, D = decoder dim.
"""

from __future__ import annotations

import pytest
import torch

from icefall.zipformer.decoder import Decoder

V, D = 11, 16


def _decoder(context_size: int) -> Decoder:
    torch.manual_seed(0)
    return Decoder(V, D, blank_id=0, context_size=context_size).eval()


def _contexts(K: int, n: int = 40, seed: int = 1) -> torch.Tensor:
    """(n, K) label ids in [-1, V), with -1 only as left padding (as the searches use)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, V, (n, K), generator=g)
    starts = torch.randint(0, K, (n,), generator=g)
    y[torch.arange(K) < starts[:, None]] = -1
    return y


@pytest.mark.parametrize("context_size", [1, 2, 3])
def test_one_step_equals_the_last_position_of_the_padded_path(context_size):
    decoder = _decoder(context_size)
    y = _contexts(context_size)  # (N, K)
    with torch.no_grad():
        step = decoder(y, need_pad=False)  # (N, 1, D)
        padded = decoder(y, need_pad=True)  # (N, K, D)
    assert step.shape == (40, 1, D)
    assert (y == -1).any() or context_size == 1  # the -1 padding is exercised
    torch.testing.assert_close(step[:, 0], padded[:, -1], rtol=1e-6, atol=1e-6)


def test_minus_one_embeds_to_the_zero_padding():
    decoder = _decoder(3)
    with torch.no_grad():
        step = decoder(torch.tensor([[-1, -1, 5]]), need_pad=False)[:, 0]  # (1, D)
        padded = decoder(torch.tensor([[5]]), need_pad=True)[:, -1]  # zero left-padding
        other = decoder(torch.tensor([[0, 0, 5]]), need_pad=False)[:, 0]
    torch.testing.assert_close(step, padded, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(step, other)  # -1 is not just another label


def test_one_step_needs_exactly_context_size_labels():
    decoder = _decoder(2)
    with pytest.raises(ValueError, match="must have 2 labels"):
        decoder(torch.zeros(3, 3, dtype=torch.int64), need_pad=False)
