"""Streaming ONNX export of a causal transducer (``export-onnx-streaming.py``) in the layout
sherpa-onnx's online recognizer reads for a zipformer2 transducer, as icefall's
``zipformer/export-onnx-streaming.py`` writes it.

The encoder runs one chunk of N streams per call:

- inputs ``x`` (N, T, 80) float32 with T = 2 * chunk_size + 13 feature frames (the chunk
  and the 13 frames the frontend reads beyond it), then each stream's state: for encoder
  layer i (counted over all stacks) ``cached_key_i``, ``cached_nonlin_attn_i``,
  ``cached_val1_i``, ``cached_val2_i``, ``cached_conv1_i``, ``cached_conv2_i`` (shapes of
  :meth:`icefall.zipformer.encoder.Zipformer2.get_init_states`), then ``embed_states``
  (N, 128, 3, 19), the frontend's cache, and ``processed_lens`` (N,) int64, frames after
  the frontend processed so far;
- outputs ``encoder_out`` (N, chunk_size / 2, joiner_dim), the joiner's ``encoder_proj``
  applied, then ``new_<name>`` for every state input, in the same order;
- metadata ``model_type`` = ``zipformer2``, ``version``, ``model_author``, ``comment``,
  ``decode_chunk_len`` (2 * chunk_size: feature frames a call advances), ``T``, and per
  stack (comma-separated) ``num_encoder_layers``, ``encoder_dims``, ``cnn_module_kernels``,
  ``left_context_len`` (left_context_frames / downsampling factor), ``query_head_dims``,
  ``value_head_dims``, ``num_heads``; plus informative extras.

N is dynamic; the states' batch dimension follows icefall's layout (dim 1 for the
attention caches, dim 0 for the rest). A new stream starts from zeros. The decoder and
joiner files are the offline export's (:mod:`icefall.export.onnx`), as are the int8
versions, tokens.txt and the all-or-nothing writing. The tag is icefall's:
``epoch-E-avg-N-chunk-C-left-L``. The encoder computes
:func:`icefall.decode.streaming.streaming_forward` with every window full (icefall's
export does the same), which is what streaming_decode.py runs.

Dimension legend: N = streams, T = feature frames of a call, F = feature dim,
T' = chunk_size (frames after the frontend), J = joiner dim, L = left context frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from icefall.decode.streaming import (
    FEATURE_RIGHT_CONTEXT,
    check_chunk_size,
    get_init_states,
    state_batch_dim,
    streaming_config,
    streaming_forward,
)
from icefall.export.onnx import (
    OPSET_VERSION,
    ExportedFiles,
    _trace_to_onnx,
    encoder_metadata,
    export_checkpoint,
    save_with_metadata,
)
from icefall.zipformer.encoder import STATE_NAMES
from icefall.zipformer.model import AsrModel


class OnnxStreamingEncoder(nn.Module):
    """Frontend + Zipformer2 + the joiner's encoder projection, one chunk of N streams.

    forward: x (N, 2 * chunk_size + 13, F), then the states (icefall's order, the last one
    (N,) int64) -> encoder_out (N, chunk_size / 2, J), then the updated states.
    """

    def __init__(self, model: AsrModel, chunk_size: int, left_context_len: int) -> None:
        super().__init__()
        self.encoder_embed = model.encoder_embed
        self.encoder = model.encoder
        self.encoder_proj = model.joiner.encoder_proj
        self.chunk_size = chunk_size
        self.left_context_len = left_context_len

    def forward(self, x: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        processed_lens = states[-1]  # (N,) int64
        x_lens = torch.zeros_like(processed_lens) + x.shape[1]  # every window is full
        out, _, new_states = streaming_forward(x, x_lens, self, list(states),
                                               self.chunk_size, self.left_context_len)
        return (self.encoder_proj(out), *new_states)  # (N, T' / 2, J), states


def state_names(num_layers: int) -> list[str]:
    """Input names of the states: six per encoder layer, then the frontend's and the
    processed lengths."""
    names = [f"{name}_{i}" for i in range(num_layers) for name in STATE_NAMES]
    return names + ["embed_states", "processed_lens"]


def _dynamic_axes(names: list[str]) -> dict[str, dict[int, str]]:
    """The batch axis N of every input and output."""
    axes = {"x": {0: "N"}, "encoder_out": {0: "N"}}
    for i, name in enumerate(names):
        axes[name] = axes[f"new_{name}"] = {state_batch_dim(i, len(names)): "N"}
    return axes


def _joined(values) -> str:
    return ",".join(str(int(v)) for v in values)


def streaming_encoder_metadata(params: Mapping[str, Any], model: AsrModel) -> dict[str, str]:
    """What sherpa-onnx's online zipformer2 model reads, plus what the model is."""
    chunk, left = streaming_config(params)
    enc = model.encoder
    meta = encoder_metadata(params, model)
    meta.update({
        "comment": f"streaming zipformer2 (chunk {chunk}, left context {left} frames)",
        "decode_chunk_len": str(2 * chunk),
        "T": str(2 * chunk + FEATURE_RIGHT_CONTEXT),
        "num_encoder_layers": _joined(enc.num_encoder_layers),
        "encoder_dims": _joined(enc.encoder_dim),
        "cnn_module_kernels": _joined(enc.cnn_module_kernel),
        "left_context_len": _joined(left // ds for ds in enc.downsampling_factor),
        "query_head_dims": _joined(enc.query_head_dim),
        "value_head_dims": _joined(enc.value_head_dim),
        "num_heads": _joined(enc.num_heads),
    })
    return meta


def export_streaming_encoder(model: AsrModel, path: Path, metadata: Mapping[str, str],
                             opset: int = OPSET_VERSION) -> None:
    """encoder-<tag>.onnx of a causal model: one chunk of N streams per call (see the
    module docstring); chunk size and left context are the encoder's first values."""
    enc = model.encoder
    chunk, left = int(enc.chunk_size[0]), enc.streaming_left_context()
    check_chunk_size(model, chunk)
    states = get_init_states(model, 2)
    states[-1] = states[-1].to(torch.int64)  # sherpa-onnx feeds int64 lengths
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2 * chunk + FEATURE_RIGHT_CONTEXT, model.encoder_embed.in_channels,
                    generator=g)  # traced with N = 2: nothing may bake in N = 1
    names = state_names((len(states) - 2) // 6)
    proto = _trace_to_onnx(OnnxStreamingEncoder(model, chunk, left), (x, *states),
                           ["x", *names], ["encoder_out", *(f"new_{n}" for n in names)],
                           _dynamic_axes(names), opset)
    save_with_metadata(proto, path, metadata)


def export_streaming_checkpoint(params: Mapping[str, Any]) -> ExportedFiles:
    """export-onnx-streaming.py: exports the causal model chosen by the checkpoint flags in
    ``params`` for streaming with its one ``chunk_size`` and ``left_context_frames``;
    returns the files written."""
    chunk, left = streaming_config(params)  # fails before anything loads
    return export_checkpoint(params, encoder_export=export_streaming_encoder,
                             metadata=streaming_encoder_metadata,
                             tag_suffix=f"-chunk-{chunk}-left-{left}")
