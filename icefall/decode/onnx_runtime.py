"""Transcribe with an exported transducer using ONNX Runtime and numpy only (no torch).

This is what ``onnx_pretrained.py`` and ``onnx_decode.py`` run, and what a deployment
needs: the three files of ``export-onnx.py``, ``tokens.txt``, ``onnxruntime``, ``numpy``,
``soundfile`` and ``kaldi-native-fbank``. It computes what sherpa-onnx's offline
recognizer computes:

- features: kaldi-native-fbank with the options sherpa-onnx's offline stream sets (80 bins,
  dither 0, ``snip_edges`` false, ``high_freq`` -400 as lhotse's ``Fbank``), from samples
  in [-1, 1]; batches are padded with log(1e-10), as sherpa-onnx and icefall pad;
- search: greedy, one symbol per frame, utterances visited longest first; the decoder
  context starts as ``[-1] * (K - 1) + [blank]``; blank is id 0 (sherpa-onnx hard-codes
  it); ``<unk>``, when tokens.txt has it, is treated as blank; ``blank_penalty`` is
  subtracted from the blank logit (sherpa-onnx applies positive penalties only);
- text: the tokens concatenated, ``▁`` read as a space, outer spaces stripped.

Dimension legend: N = utterances, T = feature frames, F = 80 feature bins,
T' = encoder frames, J = joiner dim, V = vocab size, K = decoder context size,
S = samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from icefall.audio import SAMPLE_RATE
from icefall.token_table import (  # noqa: F401 (token_id, tokens_to_text: this API)
    read_token_table,
    token_id,
    tokens_to_text,
)

FEATURE_DIM = 80
LOG_EPS = math.log(1e-10)  # padding value of features (sherpa-onnx: -23.025850929940457)
BLANK_ID = 0


# ---------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------


def fbank_options(sample_rate: int = SAMPLE_RATE, num_bins: int = FEATURE_DIM):
    """kaldi-native-fbank options equal to sherpa-onnx's offline stream, and to lhotse's
    ``Fbank`` defaults used in training (20 Hz to Nyquist - 400 Hz, FLT_EPSILON log floor)."""
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.frame_opts.samp_freq = sample_rate
    opts.mel_opts.num_bins = num_bins
    opts.mel_opts.high_freq = -400
    return opts


def compute_features(samples: np.ndarray, sample_rate: int = SAMPLE_RATE,
                     num_bins: int = FEATURE_DIM) -> np.ndarray:
    """(T, F) float32 log-mel fbank of (S,) samples in [-1, 1]; T = round(S / 160),
    F = ``num_bins``."""
    import kaldi_native_fbank as knf

    fbank = knf.OnlineFbank(fbank_options(sample_rate, num_bins))
    fbank.accept_waveform(sample_rate, np.asarray(samples, dtype=np.float32))
    fbank.input_finished()
    frames = [np.asarray(fbank.get_frame(i)) for i in range(fbank.num_frames_ready)]
    if not frames:
        return np.zeros((0, num_bins), dtype=np.float32)
    return np.stack(frames).astype(np.float32)


def pad_features(features: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pads (T_n, F) arrays into x (N, T, F) with log(1e-10); returns x and x_lens (N,)."""
    lens = np.array([f.shape[0] for f in features], dtype=np.int64)
    x = np.full((len(features), int(lens.max()), features[0].shape[1]), LOG_EPS,
                dtype=np.float32)
    for i, f in enumerate(features):
        x[i, : f.shape[0]] = f
    return x, lens


# ---------------------------------------------------------------------------
# The three ONNX models
# ---------------------------------------------------------------------------


def _session(path: str | Path, num_threads: int) -> ort.InferenceSession:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ONNX model not found: {path}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load ONNX model {path}: {reason}") from e


def _check_io(sess: ort.InferenceSession, path: str | Path, inputs: Sequence[str],
              outputs: Sequence[str]) -> None:
    got_in = [i.name for i in sess.get_inputs()]
    got_out = [o.name for o in sess.get_outputs()]
    if got_in != list(inputs) or got_out != list(outputs):
        raise ValueError(f"{path}: expected inputs {list(inputs)} and outputs "
                         f"{list(outputs)}, got {got_in} and {got_out} (wrong file?)")


def _meta_int(sess: ort.InferenceSession, path: str | Path, key: str) -> int:
    meta = sess.get_modelmeta().custom_metadata_map
    if key not in meta:
        raise ValueError(f"{path} has no '{key}' metadata (not exported by export-onnx.py?)")
    return int(meta[key])


class OnnxDecoderJoiner:
    """Decoder and joiner sessions, the same files in offline and streaming exports.

    Args:
      decoder, joiner: the files the export scripts write (fp32 or int8).
      num_threads: intra-op threads of each session.
    Raises:
      ValueError: naming the file that is missing, unreadable or not of this layout.
    """

    def __init__(self, decoder: str | Path, joiner: str | Path, num_threads: int = 1) -> None:
        self.decoder = _session(decoder, num_threads)
        _check_io(self.decoder, decoder, ["y"], ["decoder_out"])
        self.joiner = _session(joiner, num_threads)
        _check_io(self.joiner, joiner, ["encoder_out", "decoder_out"], ["logit"])
        self.context_size = _meta_int(self.decoder, decoder, "context_size")
        self.vocab_size = _meta_int(self.decoder, decoder, "vocab_size")
        self.joiner_dim = _meta_int(self.joiner, joiner, "joiner_dim")
        self.blank_id = BLANK_ID

    def run_decoder(self, y: np.ndarray) -> np.ndarray:
        """y: (N, K) int64 label contexts -> (N, J) projected decoder output."""
        return self.decoder.run(None, {"y": y.astype(np.int64, copy=False)})[0]

    def run_joiner(self, encoder_out: np.ndarray, decoder_out: np.ndarray) -> np.ndarray:
        """(N, J) projected encoder frames and decoder outputs -> (N, V) logits."""
        return self.joiner.run(None, {"encoder_out": encoder_out,
                                      "decoder_out": decoder_out})[0]


class OnnxTransducer(OnnxDecoderJoiner):
    """Encoder, decoder and joiner sessions of an offline zipformer2 transducer.

    Args:
      encoder, decoder, joiner: the files ``export-onnx.py`` writes (fp32 or int8).
      num_threads: intra-op threads of each session.
    Raises:
      ValueError: naming the file that is missing, unreadable or not of this layout.
    """

    def __init__(self, encoder: str | Path, decoder: str | Path, joiner: str | Path,
                 num_threads: int = 1) -> None:
        self.encoder = _session(encoder, num_threads)
        _check_io(self.encoder, encoder, ["x", "x_lens"], ["encoder_out", "encoder_out_lens"])
        super().__init__(decoder, joiner, num_threads)
        self.encoder_meta = dict(self.encoder.get_modelmeta().custom_metadata_map)
        width = self.encoder.get_inputs()[0].shape[2]  # x: (N, T, F)
        self.feature_dim = width if isinstance(width, int) else FEATURE_DIM

    def run_encoder(self, x: np.ndarray, x_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x: (N, T, F) float32; x_lens: (N,) int64 -> encoder_out (N, T', J), lens (N,)."""
        out, lens = self.encoder.run(None, {"x": x.astype(np.float32, copy=False),
                                            "x_lens": x_lens.astype(np.int64, copy=False)})
        return out, lens


# ---------------------------------------------------------------------------
# Greedy search
# ---------------------------------------------------------------------------


def greedy_search(model: OnnxTransducer, encoder_out: np.ndarray,
                  encoder_out_lens: np.ndarray, blank_penalty: float = 0.0,
                  unk_id: int = -1) -> list[list[int]]:
    """Greedy search, one symbol per frame, over a padded batch (sherpa-onnx's algorithm).

    Args:
      model: the sessions; encoder_out: (N, T', J); encoder_out_lens: (N,).
      blank_penalty: subtracted from the blank logit.
      unk_id: a token treated as blank (never emitted); -1 for none.
    Returns:
      N token-id lists, in the caller's order.
    """
    lens = np.asarray(encoder_out_lens, dtype=np.int64)
    if encoder_out.ndim != 3 or lens.shape != (encoder_out.shape[0],):
        raise ValueError(f"encoder_out must be (N, T, J) with (N,) lengths, got "
                         f"{encoder_out.shape} and {lens.shape}")
    order = np.argsort(-lens, kind="stable")
    enc, lens = encoder_out[order], lens[order]
    K, blank = model.context_size, model.blank_id
    hyps = [[-1] * (K - 1) + [blank] for _ in range(len(lens))]
    dec = model.run_decoder(np.array([h[-K:] for h in hyps], dtype=np.int64))
    for t in range(int(lens.max(initial=0))):
        n = int((lens > t).sum())
        logits = model.run_joiner(np.ascontiguousarray(enc[:n, t]), dec[:n])
        logits[:, blank] -= blank_penalty
        emitted = False
        for i, y in enumerate(logits.argmax(axis=1).tolist()):
            if y != blank and y != unk_id:
                hyps[i].append(y)
                emitted = True
        if emitted:
            dec = model.run_decoder(np.array([h[-K:] for h in hyps[:n]], dtype=np.int64))
    out: list[list[int]] = [[] for _ in hyps]
    for i, n in enumerate(order.tolist()):
        out[n] = hyps[i][K:]
    return out


def transcribe(model: OnnxTransducer, tokens: Sequence[str], waves: Sequence[np.ndarray],
               sample_rate: int = SAMPLE_RATE, blank_penalty: float = 0.0) -> list[str]:
    """Text of each (S,) wave: fbank, encoder, greedy search, tokens."""
    x, x_lens = pad_features([compute_features(w, sample_rate, model.feature_dim)
                              for w in waves])
    enc, enc_lens = model.run_encoder(x, x_lens)
    hyps = greedy_search(model, enc, enc_lens, blank_penalty=blank_penalty,
                         unk_id=token_id(tokens, "<unk>"))
    return [tokens_to_text(h, tokens) for h in hyps]


def load_onnx_model(encoder: str | Path, decoder: str | Path, joiner: str | Path,
                    tokens: str | Path, num_threads: int = 1
                    ) -> tuple[OnnxTransducer, list[str]]:
    """The three sessions and the token table; checks that they fit together.

    Raises:
      ValueError: naming the file that is missing, unreadable or does not fit.
    """
    table = read_token_table(tokens)
    model = OnnxTransducer(encoder, decoder, joiner, num_threads=num_threads)
    if len(table) != model.vocab_size:
        raise ValueError(f"{tokens} has {len(table)} tokens but {decoder} has vocab_size "
                         f"{model.vocab_size}")
    return model, table
