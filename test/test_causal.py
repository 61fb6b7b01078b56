"""A causal model's encoder output never depends on frames of later chunks; chunk sizes are
drawn in training, adapter training on a frozen causal base included."""

from __future__ import annotations

import copy
import random

import torch
from conftest import tiny_params

from icefall.utils import make_pad_mask
from icefall.zipformer import get_model, set_adapter_training


def test_future_chunks_do_not_change_earlier_outputs():
    torch.manual_seed(0)
    model = get_model(tiny_params(causal=True, chunk_size="16", left_context_frames="32",
                                  use_adapters=True)).eval()
    T, N, C = 64, 2, 48
    x = torch.randn(T, N, C)
    lens = torch.tensor([T, T])
    mask = make_pad_mask(lens)
    perturbed = x.clone()
    boundary = 32  # a chunk boundary at every stack's frame rate (16 | 32)
    perturbed[boundary:] += torch.randn(T - boundary, N, C)
    with torch.no_grad():
        out, _ = model.encoder(x, lens, mask)
        out2, _ = model.encoder(perturbed, lens, mask)
    # The output is downsampled by 2: frames < boundary / 2 come from earlier chunks.
    assert torch.equal(out[: boundary // 2], out2[: boundary // 2])
    assert (out[boundary // 2:] - out2[boundary // 2:]).abs().max() > 1e-3


def test_non_causal_model_looks_ahead():
    torch.manual_seed(0)
    model = get_model(tiny_params()).eval()
    x = torch.randn(64, 1, 48)
    perturbed = x.clone()
    perturbed[32:] += 1.0
    lens = torch.tensor([64])
    with torch.no_grad():
        out, _ = model.encoder(x, lens, make_pad_mask(lens))
        out2, _ = model.encoder(perturbed, lens, make_pad_mask(lens))
    assert (out[:16] - out2[:16]).abs().max() > 1e-3


def test_eval_uses_first_chunk_size_and_training_draws_from_list():
    model = get_model(tiny_params(causal=True, chunk_size="16,32,-1",
                                  left_context_frames="64,128"))
    enc = model.encoder.eval()
    assert {enc.get_chunk_info() for _ in range(20)} == {(16, 4)}
    enc.train()
    seen = {enc.get_chunk_info() for _ in range(200)}
    assert {c for c, _ in seen} == {16, 32, -1}
    assert (-1, -1) in seen and (32, 2) in seen and (16, 8) in seen


def test_attention_mask_limits_left_context():
    model = get_model(tiny_params(causal=True, chunk_size="16", left_context_frames="32"))
    mask = model.encoder._attn_mask(64, 16, 2, torch.device("cpu"))
    t, s = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    allowed = (s // 16 <= t // 16) & (s // 16 >= t // 16 - 2)
    assert torch.equal(~mask, allowed)


def test_adapter_training_draws_chunk_sizes_while_the_base_stays_in_eval():
    """Causal adapter training draws chunk size and left context per batch as the base
    training does; the frozen model keeps its inference behaviour. Oracle: the same
    forward in eval mode with the drawn configuration made the first one."""
    torch.manual_seed(0)
    chunks, lefts = "16,32,-1", "32,64"
    model = get_model(tiny_params(causal=True, chunk_size=chunks, left_context_frames=lefts,
                                  use_adapters=True))
    set_adapter_training(model)
    enc = model.encoder
    assert not enc.training and enc.draw_chunk_sizes
    seen = {enc.get_chunk_info() for _ in range(200)}
    assert seen == {(16, 2), (16, 4), (32, 1), (32, 2), (-1, -1)}
    x, x_lens = torch.randn(2, 150, 80), torch.tensor([150, 120])
    outputs = set()
    for seed in range(6):
        random.seed(seed)
        chunk = random.choice(enc.chunk_size)
        left = random.choice(enc.left_context_frames) if chunk != -1 else -1
        random.seed(seed)
        with torch.no_grad():
            got, _ = model.forward_encoder(x, x_lens)
        reference = copy.deepcopy(model).eval()
        reference.encoder.chunk_size, reference.encoder.left_context_frames = (chunk,), (left,)
        with torch.no_grad():
            want, _ = reference.forward_encoder(x, x_lens)
        assert (got - want).abs().max() < 1e-5, (chunk, left)
        outputs.add((chunk, left, round(float(got.sum()), 3)))
    assert len({o[:2] for o in outputs}) >= 3 and len({o[2] for o in outputs}) >= 3
    model.eval()  # validation and decoding: the first values again
    assert not enc.draw_chunk_sizes and {enc.get_chunk_info() for _ in range(20)} == {(16, 2)}
