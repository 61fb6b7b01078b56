"""Streaming transcription with the files of ``export-onnx-streaming.py``, in ONNX Runtime
and numpy only (no torch): what ``onnx_pretrained-streaming.py`` runs and what
sherpa-onnx's online recognizer computes for an online zipformer2 transducer.

- The encoder's state layout and call size come from its metadata, as sherpa-onnx reads
  them (``T``, ``decode_chunk_len``, and per stack ``num_encoder_layers``, ``encoder_dims``,
  ``cnn_module_kernels``, ``left_context_len``, ``query_head_dims``, ``value_head_dims``,
  ``num_heads``); a stream starts from zeros.
- Features: kaldi-native-fbank's online fbank with sherpa-onnx's options
  (:func:`icefall.decode.onnx_runtime.fbank_options`) over the samples followed by
  ``tail_padding`` seconds of silence (sherpa-onnx's examples append 0.66 s, so that the
  last words reach a full chunk), then input finished.
- Chunks: while ``processed + T`` < frames ready (sherpa-onnx's ``IsReady``), the T frames
  from ``processed`` go through the encoder and ``processed`` advances by
  ``decode_chunk_len``; frames that never fill a chunk are not decoded.
- Search: sherpa-onnx's online greedy search: one symbol per frame, the decoder output
  carried from chunk to chunk, ``<unk>`` treated as blank, a positive ``blank_penalty``
  subtracted from the blank logit; blank is id 0.

Dimension legend: N = streams, T = feature frames of a call, F = feature bins,
T' = encoder frames of a call, J = joiner dim, K = decoder context size, S = samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from icefall.audio import SAMPLE_RATE
from icefall.decode.onnx_runtime import (
    FEATURE_DIM,
    OnnxDecoderJoiner,
    _session,
    fbank_options,
    token_id,
    tokens_to_text,
)
from icefall.token_table import read_token_table

TAIL_PADDING = 0.66  # seconds of silence after the samples (sherpa-onnx's examples)
STATE_NAMES = ("cached_key", "cached_nonlin_attn", "cached_val1", "cached_val2",
               "cached_conv1", "cached_conv2")
_STACK_KEYS = ("num_encoder_layers", "encoder_dims", "cnn_module_kernels", "left_context_len",
               "query_head_dims", "value_head_dims", "num_heads")


def _int_list(meta: dict[str, str], key: str, path: str | Path) -> list[int]:
    if key not in meta:
        raise ValueError(f"{path} has no '{key}' metadata (not a streaming export of "
                         "export-onnx-streaming.py?)")
    return [int(v) for v in meta[key].split(",")]


def layer_state_shapes(meta: dict[str, str], path: str | Path) -> list[tuple[int | str, ...]]:
    """Shapes of the six cached tensors of every encoder layer from the metadata, with
    "N" for the batch dimension, in the order the encoder takes them."""
    v = {k: _int_list(meta, k, path) for k in _STACK_KEYS}
    shapes: list[tuple[int | str, ...]] = []
    for i, layers in enumerate(v["num_encoder_layers"]):
        L, C = v["left_context_len"][i], v["encoder_dims"][i]
        key = (L, "N", v["query_head_dims"][i] * v["num_heads"][i])
        val = (L, "N", v["value_head_dims"][i] * v["num_heads"][i])
        conv = ("N", C, v["cnn_module_kernels"][i] // 2)
        shapes += [key, (1, "N", L, 3 * C // 4), val, val, conv, conv] * layers
    return shapes


class OnnxStreamingTransducer(OnnxDecoderJoiner):
    """The sessions of a streaming zipformer2 transducer.

    Args:
      encoder, decoder, joiner: the files ``export-onnx-streaming.py`` writes (fp32 or
        int8); num_threads: intra-op threads of each session.
    Raises:
      ValueError: naming the file that is missing, unreadable, not a streaming export, or
        whose metadata does not match its inputs.
    """

    def __init__(self, encoder: str | Path, decoder: str | Path, joiner: str | Path,
                 num_threads: int = 1) -> None:
        self.encoder = _session(encoder, num_threads)
        meta = dict(self.encoder.get_modelmeta().custom_metadata_map)
        if meta.get("model_type") != "zipformer2":
            raise ValueError(f"{encoder}: model_type is {meta.get('model_type')!r}, not "
                             "'zipformer2'")
        self.T = _int_list(meta, "T", encoder)[0]
        self.decode_chunk_len = _int_list(meta, "decode_chunk_len", encoder)[0]
        self.encoder_meta = meta
        self.state_shapes = layer_state_shapes(meta, encoder)
        num_layers = len(self.state_shapes) // 6
        self.state_names = [f"{n}_{i}" for i in range(num_layers) for n in STATE_NAMES]
        self.state_names += ["embed_states", "processed_lens"]
        self.feature_dim = bins = int(meta.get("feature_dim", FEATURE_DIM))
        self.state_shapes += [("N", 128, 3, ((bins - 1) // 2 - 1) // 2), ("N",)]
        self._check_inputs(encoder)
        super().__init__(decoder, joiner, num_threads)

    def _check_inputs(self, path: str | Path) -> None:
        """The graph's inputs and outputs are x and the states the metadata describes."""
        inputs = {i.name: i.shape for i in self.encoder.get_inputs()}
        names = ["x", *self.state_names]
        outputs = ["encoder_out", *(f"new_{n}" for n in self.state_names)]
        if list(inputs) != names or [o.name for o in self.encoder.get_outputs()] != outputs:
            raise ValueError(f"{path}: inputs and outputs are not those of a streaming "
                             "zipformer2 encoder with the states its metadata describes")
        for name, shape in zip(self.state_names, self.state_shapes):
            fixed = [d for d in shape if d != "N"]
            if [d for d in inputs[name] if not isinstance(d, str)] != fixed:
                raise ValueError(f"{path}: input {name} has shape {inputs[name]}, its "
                                 f"metadata says {shape}")

    def init_states(self, batch_size: int = 1) -> list[np.ndarray]:
        """The states of ``batch_size`` new streams (zeros; lengths int64)."""
        states = [np.zeros([batch_size if d == "N" else d for d in shape], dtype=np.float32)
                  for shape in self.state_shapes[:-1]]
        return states + [np.zeros(batch_size, dtype=np.int64)]

    def run_encoder(self, x: np.ndarray, states: Sequence[np.ndarray]
                    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """x: (N, T, F) float32 and the states -> encoder_out (N, T', J), new states."""
        feeds = {"x": x.astype(np.float32, copy=False), **dict(zip(self.state_names, states))}
        out = self.encoder.run(None, feeds)
        return out[0], out[1:]


class OnlineGreedySearch:
    """sherpa-onnx's online greedy search for N streams, chunk by chunk.

    Args:
      model: the sessions; batch_size: N; blank_penalty: subtracted from the blank logit
        when positive (as sherpa-onnx); unk_id: a token treated as blank, -1 for none.
    """

    def __init__(self, model: OnnxDecoderJoiner, batch_size: int = 1,
                 blank_penalty: float = 0.0, unk_id: int = -1) -> None:
        K = model.context_size
        self.model = model
        self.hyps = [[-1] * (K - 1) + [model.blank_id] for _ in range(batch_size)]
        self.blank_penalty = blank_penalty
        self.unk_id = unk_id
        self.decoder_out = self._decoder_out()  # (N, J)

    def _decoder_out(self) -> np.ndarray:
        K = self.model.context_size
        return self.model.run_decoder(np.array([h[-K:] for h in self.hyps], dtype=np.int64))

    def __call__(self, encoder_out: np.ndarray) -> None:
        """Advances every stream over its frames of encoder_out (N, T', J)."""
        blank = self.model.blank_id
        for t in range(encoder_out.shape[1]):
            logits = self.model.run_joiner(np.ascontiguousarray(encoder_out[:, t]),
                                           self.decoder_out)  # (N, V)
            if self.blank_penalty > 0:
                logits[:, blank] -= self.blank_penalty
            emitted = False
            for hyp, y in zip(self.hyps, logits.argmax(axis=1).tolist()):
                if y != blank and y != self.unk_id:
                    hyp.append(y)
                    emitted = True
            if emitted:
                self.decoder_out = self._decoder_out()

    def tokens(self, n: int = 0) -> list[int]:
        """The labels of stream n so far."""
        return self.hyps[n][self.model.context_size:]


def streaming_features(samples: np.ndarray, sample_rate: int = SAMPLE_RATE,
                       tail_padding: float = TAIL_PADDING,
                       num_bins: int = FEATURE_DIM) -> np.ndarray:
    """(T, F) online fbank (F = ``num_bins``) of the (S,) samples and ``tail_padding``
    seconds of zeros."""
    import kaldi_native_fbank as knf

    fbank = knf.OnlineFbank(fbank_options(sample_rate, num_bins))
    pad = np.zeros(int(tail_padding * sample_rate), dtype=np.float32)
    fbank.accept_waveform(sample_rate, np.concatenate([np.asarray(samples, np.float32), pad]))
    fbank.input_finished()
    frames = [np.asarray(fbank.get_frame(i)) for i in range(fbank.num_frames_ready)]
    return np.stack(frames).astype(np.float32) if frames else np.zeros((0, num_bins),
                                                                         np.float32)


def decode_features(model: OnnxStreamingTransducer, features: np.ndarray,
                    search: OnlineGreedySearch) -> int:
    """Runs one stream's (T, F) features chunk by chunk as sherpa-onnx does; returns the
    number of chunks."""
    states, processed, chunks = model.init_states(1), 0, 0
    while processed + model.T < features.shape[0]:
        x = features[None, processed: processed + model.T]  # (1, T, F)
        processed += model.decode_chunk_len
        encoder_out, states = model.run_encoder(x, states)
        search(encoder_out)
        chunks += 1
    return chunks


def transcribe_streaming(model: OnnxStreamingTransducer, tokens: Sequence[str],
                         waves: Sequence[np.ndarray], sample_rate: int = SAMPLE_RATE,
                         blank_penalty: float = 0.0, tail_padding: float = TAIL_PADDING
                         ) -> list[str]:
    """Text of each (S,) wave, streamed one at a time."""
    texts = []
    for wave in waves:
        search = OnlineGreedySearch(model, 1, blank_penalty, token_id(tokens, "<unk>"))
        feats = streaming_features(wave, sample_rate, tail_padding, model.feature_dim)
        decode_features(model, feats, search)
        texts.append(tokens_to_text(search.tokens(), tokens))
    return texts


def load_onnx_streaming_model(encoder: str | Path, decoder: str | Path, joiner: str | Path,
                              tokens: str | Path, num_threads: int = 1
                              ) -> tuple[OnnxStreamingTransducer, list[str]]:
    """The three sessions and the token table; checks that they fit together."""
    table = read_token_table(tokens)
    model = OnnxStreamingTransducer(encoder, decoder, joiner, num_threads=num_threads)
    if len(table) != model.vocab_size:
        raise ValueError(f"{tokens} has {len(table)} tokens but {decoder} has vocab_size "
                         f"{model.vocab_size}")
    return model, table
