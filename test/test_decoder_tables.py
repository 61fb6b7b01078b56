"""Decoder table sums (icefall/decode/decoder_tables.py) against the decoder module's own
one-step call, and the cases where the search must call the module instead.

Dimension legend: M = contexts, K = context size, V = vocab size, D = decoder dim.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_params

from icefall.decode.decoder_tables import DecoderTables, tables_apply
from icefall.zipformer import get_model
from icefall.zipformer.decoder import Decoder

V, D = 11, 16


def _contexts(K: int, M: int = 40, seed: int = 1) -> torch.Tensor:
    """(M, K) label ids in [-1, V), -1 only as left padding (as the searches use it)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, V, (M, K), generator=g)
    starts = torch.randint(0, K, (M,), generator=g)
    y[torch.arange(K) < starts[:, None]] = -1
    return y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("context_size", [1, 2, 3])
def test_table_sums_equal_the_decoder_module(context_size, dtype):
    torch.manual_seed(0)
    decoder = Decoder(V, D, blank_id=0, context_size=context_size).to(dtype).eval()
    y = _contexts(context_size)
    with torch.inference_mode():
        assert tables_apply(decoder)
        got = DecoderTables(decoder)(y)  # (M, D)
        expected = decoder(y, need_pad=False)[:, 0]
    assert got.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


def test_tables_are_used_only_where_they_reproduce_the_module():
    decoder = Decoder(V, D, blank_id=0, context_size=2).eval()
    assert not tables_apply(decoder)  # grad on: the module must run
    lora = get_model(tiny_params(use_adapters=True, adapter_kind="lora",
                                 adapter_targets="decoder"))
    with torch.no_grad():
        assert tables_apply(decoder)
        assert not tables_apply(lora.train().decoder)  # LoRA unmerged in train mode
        assert tables_apply(lora.eval().decoder)  # merged into the embedding weight
        assert not tables_apply(torch.nn.Linear(3, 3))
