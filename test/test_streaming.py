"""Streaming: icefall's chunk-by-chunk API on the causal Zipformer, against oracles.

- the reference's golden stream (golden-streaming-tiny.pt), fed as its README says;
- the full forward of the same causal model: with chunks of the model's eval chunk size
  and left_context_frames[0] a multiple of it, chunk k of a stream attends to exactly the
  frames the full forward's chunked attention mask allows (chunk k and the L frames before
  it), its convolutions see the same frames, and the frontend's ConvNeXt block gets its
  3 frames of left context from the cache and its 3 frames of right context from the 13
  extra feature frames of each window. So streaming K chunks of 2 * chunk + 13-frame windows
  equals the full forward of the first 2 * chunk * K + 13 feature frames, the frontend's
  output cut to its first chunk * K frames (the last 3 see the full forward's zero padding
  instead of features), adapters included. It does not hold for another chunk size (the
  full forward's convolutions and mask use chunk_size[0]), for an L that is not a multiple
  of the chunk (the mask keeps L // chunk whole chunks, the caches L frames), or for a last
  window padded with LOG_EPS (the full forward sees zeros past the end of its input);
- each stream of a batch equals the same stream alone (streams joining late, a masked
  short last chunk);
- streaming greedy search and modified beam search equal the offline searches on the
  streaming encoder output.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_params

from icefall.decode.search import greedy_search_batch, modified_beam_search
from icefall.decode.streaming import (
    FEATURE_RIGHT_CONTEXT,
    DecodeStream,
    get_init_states,
    stack_states,
    streaming_forward,
    streaming_greedy_search,
    streaming_search,
    unstack_states,
)
from icefall.utils import make_pad_mask
from icefall.zipformer import adapters_disabled, get_model, iter_adapters
from icefall.zipformer.encoder import STATE_NAMES

TOL = 1e-4
CHUNK, LEFT = 16, 32


def _causal_model(**overrides) -> torch.nn.Module:
    """A tiny causal model with adapters, its zero-initialised parts (adapter outputs,
    chunk-edge scales) made non-zero so that they matter."""
    torch.manual_seed(0)
    cfg = {"causal": True, "chunk_size": str(CHUNK), "left_context_frames": str(LEFT),
           "use_adapters": True, **overrides}
    model = get_model(tiny_params(**cfg))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, adapter in iter_adapters(model):
            for p in adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for name, p in model.named_parameters():
            if name.endswith("chunkwise_conv_scale"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return _causal_model()


def _features(T: int, seed: int) -> torch.Tensor:
    return torch.randn(T, 80, generator=torch.Generator().manual_seed(seed))


def _stream_alone(model, features: torch.Tensor, chunk: int, left: int) -> torch.Tensor:
    """Encoder output (T'', C) of one stream fed as icefall's streaming_decode.py feeds it:
    13 frames of LOG_EPS after the features, windows of 2 * chunk + 13 frames every
    2 * chunk frames, padded with LOG_EPS when short."""
    stream = DecodeStream(features, get_init_states(model, 1), context=[0])
    outs = []
    with torch.no_grad():
        while not stream.done:
            window = stream.get_feature_frames(2 * chunk)[None]  # (1, 2 chunk + 13, F)
            lens = torch.tensor([window.shape[1]])
            out, _, stream.states = streaming_forward(window, lens, model, stream.states,
                                                      chunk, left)
            outs.append(out[0])
    return torch.cat(outs)


# ---------------------------------------------------------------------------
# The reference's golden stream
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden(reference_dir):
    data = torch.load(reference_dir / "golden-streaming-tiny.pt", weights_only=True)
    model = get_model(data["config"])
    model.load_state_dict(data["state_dict"], strict=True)
    return model.eval(), data


def test_golden_stream_matches_reference(golden):
    model, g = golden
    out = _stream_alone(model, g["features"], g["chunk_size"], g["left_context_frames"])
    ref = g["streaming_encoder_out"]
    assert out.shape == ref.shape
    assert (out - ref).abs().max() < TOL


def test_golden_stream_depends_on_the_adapters(golden):
    """Guards the comparison and shows the adapters act in the streaming path: a changed
    adapter, or adapters switched off, are detected (on the first 3 chunks, whose
    windows are the same in a stream of the first 2 * chunk_size * 3 + 13 frames)."""
    model, g = golden
    cs, left = g["chunk_size"], g["left_context_frames"]
    features = g["features"][: 2 * cs * 3 + FEATURE_RIGHT_CONTEXT]
    ref = g["streaming_encoder_out"][: 3 * cs // 2]
    first = _stream_alone(model, features, cs, left)[: ref.shape[0]]
    assert (first - ref).abs().max() < TOL
    _, adapter = next(iter_adapters(model))
    with torch.no_grad():
        adapter.out_proj.weight.add_(0.1)
        changed = _stream_alone(model, features, cs, left)[: ref.shape[0]]
        adapter.out_proj.weight.sub_(0.1)
    assert (changed - ref).abs().max() > 10 * TOL
    with adapters_disabled(model):
        off = _stream_alone(model, features, cs, left)[: ref.shape[0]]
    assert (off - ref).abs().max() > 10 * TOL


# ---------------------------------------------------------------------------
# Streaming equals the full (chunk-masked) forward of the same causal model
# ---------------------------------------------------------------------------


def _full_forward(model, features: torch.Tensor, num_chunks: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Frontend output cut to chunk * K frames (T', C0) and the encoder's full forward on
    it (T'', C), for one utterance of 2 * chunk * K + 13 feature frames."""
    T = CHUNK * num_chunks
    with torch.no_grad():
        embed, _ = model.encoder_embed(features[None], torch.tensor([features.shape[0]]))
        embed = embed[:, :T]  # (1, T', C0)
        lens = torch.tensor([T])
        out, _ = model.encoder(embed.permute(1, 0, 2), lens, make_pad_mask(lens, T))
    return embed[0], out[:, 0]


def test_frontend_streams_as_its_full_forward(model):
    K = 3
    features = _features(2 * CHUNK * K + FEATURE_RIGHT_CONTEXT, seed=1)
    full, _ = _full_forward(model, features, K)
    cache = model.encoder_embed.get_init_states(1)
    pieces = []
    with torch.no_grad():
        for k in range(K):
            window = features[2 * CHUNK * k: 2 * CHUNK * (k + 1) + FEATURE_RIGHT_CONTEXT]
            x, x_lens, cache = model.encoder_embed.streaming_forward(
                window[None], torch.tensor([window.shape[0]]), cache)
            assert x.shape[1] == CHUNK and x_lens.tolist() == [CHUNK]
            pieces.append(x[0])
    assert (torch.cat(pieces) - full).abs().max() < 1e-5


def test_stream_equals_full_causal_forward_with_adapters(model):
    K = 4
    features = _features(2 * CHUNK * K + FEATURE_RIGHT_CONTEXT, seed=2)
    _, full = _full_forward(model, features, K)
    # The stream adds its own 13 frames of padding: its extra last chunk is not compared.
    streamed = _stream_alone(model, features, CHUNK, LEFT)[: full.shape[0]]
    assert full.shape[0] == K * CHUNK // 2
    assert (streamed - full).abs().max() < 1e-5
    with adapters_disabled(model):  # the adapters matter here too
        _, base = _full_forward(model, features, K)
    assert (base - full).abs().max() > 1e-2


# ---------------------------------------------------------------------------
# Batching: each stream of a batch equals the stream alone
# ---------------------------------------------------------------------------


def _windows(features: torch.Tensor, num: int) -> list[torch.Tensor]:
    stream = DecodeStream(features, [], context=[0])
    return [stream.get_feature_frames(2 * CHUNK) for _ in range(num)]


def _run(model, schedule: list[list[tuple[str, torch.Tensor, int]]]
         ) -> dict[str, list[torch.Tensor]]:
    """Runs steps of (name, window, valid feature frames) batches; states are kept per
    stream and stacked per step. Returns each stream's valid outputs per step."""
    states: dict[str, list[torch.Tensor]] = {}
    outs: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for batch in schedule:
            names = [name for name, _, _ in batch]
            for name in names:
                states.setdefault(name, get_init_states(model, 1))
            features = torch.stack([w for _, w, _ in batch])
            lens = torch.tensor([n for _, _, n in batch])
            out, out_lens, new = streaming_forward(
                features, lens, model, stack_states([states[n] for n in names]), CHUNK, LEFT)
            for i, (name, st) in enumerate(zip(names, unstack_states(new))):
                states[name] = st
                outs.setdefault(name, []).append(out[i, : int(out_lens[i])])
    return outs


def test_batched_streams_equal_each_stream_alone(model):
    """Stream a runs 4 chunks; stream b joins at a's second chunk (different processed
    lengths, so different masks of the left context) and ends with a chunk of only 33
    valid feature frames (10 frontend frames; the rest masked)."""
    wa = _windows(_features(4 * 2 * CHUNK, seed=4), 4)
    wb = _windows(_features(3 * 2 * CHUNK, seed=5), 3)
    full = wa[0].shape[0]
    short = 33
    batched = _run(model, [[("a", wa[0], full)]]
                   + [[("a", wa[k + 1], full), ("b", wb[k], full if k < 2 else short)]
                      for k in range(3)])
    alone_a = _run(model, [[("a", w, full)] for w in wa])
    alone_b = _run(model, [[("b", w, full if k < 2 else short)] for k, w in enumerate(wb)])
    assert [o.shape[0] for o in batched["b"]] == [8, 8, 5]
    for name, alone in (("a", alone_a), ("b", alone_b)):
        for got, want in zip(batched[name], alone[name], strict=True):
            assert got.shape == want.shape
            assert (got - want).abs().max() < 1e-5


def test_stack_and_unstack_are_inverse(model):
    a = get_init_states(model, 1)
    b = [s + 1 for s in get_init_states(model, 2)]
    batch = stack_states([a] + unstack_states(b))
    assert [tuple(s.shape) for s in batch] == [tuple(s.shape)
                                               for s in get_init_states(model, 3)]
    back = unstack_states(batch)
    assert len(back) == 3
    for got, want in zip(back[0], a):
        assert torch.equal(got, want)
    for n in (1, 2):
        for got, want in zip(back[n], unstack_states(b)[n - 1]):
            assert torch.equal(got, want)


# ---------------------------------------------------------------------------
# State layout
# ---------------------------------------------------------------------------


def test_init_states_have_icefalls_layout_and_round_trip(model):
    N = 2
    states = get_init_states(model, N)
    cfg = tiny_params()
    dims = [int(v) for v in cfg["encoder_dim"].split(",")]
    heads = [int(v) for v in cfg["num_heads"].split(",")]
    layers = [int(v) for v in cfg["num_encoder_layers"].split(",")]
    ds = [int(v) for v in cfg["downsampling_factor"].split(",")]
    kernels = [int(v) for v in cfg["cnn_module_kernel"].split(",")]
    expected = []
    for C, H, n, d, k in zip(dims, heads, layers, ds, kernels):
        Lc = LEFT // d
        expected += [(Lc, N, H * 16), (1, N, Lc, 3 * C // 4), (Lc, N, H * 8),
                     (Lc, N, H * 8), (N, C, k // 2), (N, C, k // 2)] * n
    expected += [(N, 128, 3, 19), (N,)]
    assert [tuple(s.shape) for s in states] == expected
    assert len(STATE_NAMES) == 6 and (len(states) - 2) == 6 * sum(layers)
    assert states[-1].dtype == torch.int32
    features = torch.randn(N, 2 * CHUNK + FEATURE_RIGHT_CONTEXT, 80)
    lens = torch.full((N,), features.shape[1])
    with torch.no_grad():
        out, out_lens, new = streaming_forward(features, lens, model, states, CHUNK, LEFT)
    assert out.shape == (N, CHUNK // 2, max(dims)) and out_lens.tolist() == [CHUNK // 2] * N
    assert [tuple(s.shape) for s in new] == expected
    assert [s.dtype for s in new[:-1]] == [torch.float32] * (len(new) - 1)
    assert new[-1].tolist() == [CHUNK] * N
    # The caches hold the chunk's frames: not the zeros they started from.
    assert all(s.abs().max() > 0 for s in new[:-2])


def test_states_follow_the_models_dtype():
    """A float64 copy of the model streams in float64 (its states too) and agrees with
    the float32 model."""
    model32 = _causal_model()
    model64 = _causal_model().to(torch.float64)
    states = get_init_states(model64, 1)
    assert {s.dtype for s in states[:-1]} == {torch.float64}
    features = _features(2 * CHUNK * 2 + 5, seed=6)
    out64 = _stream_alone(model64, features.double(), CHUNK, LEFT)
    out32 = _stream_alone(model32, features, CHUNK, LEFT)
    assert out64.dtype == torch.float64
    assert (out64 - out32.double()).abs().max() < 1e-4


def test_bad_inputs_are_rejected_with_clear_errors(model):
    states = get_init_states(model, 1)
    x = torch.randn(CHUNK, 1, 48)
    mask = torch.zeros(1, LEFT + CHUNK, dtype=torch.bool)
    lens = torch.tensor([CHUNK])
    with pytest.raises(ValueError, match="encoder states"):
        model.encoder.streaming_forward(x, lens, states[:-3], mask)
    with pytest.raises(ValueError, match="cached_conv2"):
        model.encoder.streaming_forward(x, lens, states[:5] + [states[5][..., :1]]
                                        + states[6:-2], mask)
    with pytest.raises(ValueError, match="src_key_padding_mask"):
        model.encoder.streaming_forward(x, lens, states[:-2], mask[:, 1:])
    with pytest.raises(ValueError, match="at least 15"):
        model.encoder_embed.streaming_forward(torch.randn(1, 14, 80), torch.tensor([14]),
                                              states[-2])
    with pytest.raises(ValueError, match="causal"):
        get_model(tiny_params()).encoder.get_init_states(1)
    with pytest.raises(ValueError, match="left-context-frames"):
        _causal_model(left_context_frames="-1").encoder.get_init_states(1)
    with pytest.raises(ValueError, match="chunk_size"):
        streaming_greedy_search(model, [torch.randn(50, 80)], chunk_size=12)


# ---------------------------------------------------------------------------
# Streaming greedy search
# ---------------------------------------------------------------------------


def test_streaming_greedy_search_equals_offline_search_on_streamed_output():
    """Three utterances of different lengths, two streams at a time (the third joins when
    the first finishes), against offline greedy search on each stream's encoder output
    computed alone."""
    model = _causal_model()
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():  # a joiner whose choices vary with the frame and the context
        for p in model.joiner.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    penalty = -7.0  # this joiner's blank logit is low: raise it so that blanks and labels mix
    feats = [_features(T, seed=10 + i) for i, T in enumerate([100, 61, 140])]
    got = streaming_greedy_search(model, feats, num_decode_streams=2, blank_penalty=penalty)
    want, frames = [], []
    for f in feats:
        enc = _stream_alone(model, f, CHUNK, LEFT)[None]  # (1, T'', C)
        want += greedy_search_batch(model, enc, torch.tensor([enc.shape[1]]),
                                    blank_penalty=penalty)
        frames.append(enc.shape[1])
    assert got == want
    assert all(5 <= len(w) < n for w, n in zip(want, frames))  # labels and blanks
    assert len({tuple(w) for w in want}) == 3


def test_streaming_beam_search_equals_offline_search_on_streamed_output():
    """Modified beam search carried from chunk to chunk (hypotheses stacked and split per
    chunk, streams joining as others finish) gives what the offline search gives on each
    stream's whole encoder output, for beams of 1 (greedy search) and 4."""
    model = _causal_model()
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in model.joiner.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    penalty = -7.0
    feats = [_features(T, seed=20 + i) for i, T in enumerate([100, 61, 140, 33])]
    encs = [_stream_alone(model, f, CHUNK, LEFT)[None] for f in feats]  # (1, T'', C)
    greedy = streaming_greedy_search(model, feats, num_decode_streams=3,
                                     blank_penalty=penalty)
    for beam in (1, 4):
        got = streaming_search(model, feats, "modified_beam_search", beam_size=beam,
                               num_decode_streams=3, blank_penalty=penalty)
        want = [modified_beam_search(model, e, torch.tensor([e.shape[1]]), beam=beam,
                                     blank_penalty=penalty)[0] for e in encs]
        assert got == want, beam
        if beam == 1:
            assert got == greedy
    assert all(len(w) >= 3 for w in want) and len({tuple(w) for w in want}) == 4
    assert want != greedy  # the beam finds other hypotheses than greedy search
