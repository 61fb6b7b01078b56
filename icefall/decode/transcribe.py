"""Transcribing sound files with a checkpoint and tokens.txt or a BPE model (pretrained.py).

Features are kaldi-compatible fbank at 16 kHz with as many mel bins as the model takes
(80 in icefall's recipes; lhotse's ``Fbank``, the same extractor as training; kaldifeat's
when it imports).

Dimension legend: N = files, T = frames, S = samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from icefall.audio import read_sound_file as read_samples
from icefall.checkpoint import load_checkpoint_file, model_state_from, strip_ddp_prefix
from icefall.data import load_bpe_model, make_fbank_extractor
from icefall.data.fbank import NUM_MEL_BINS
from icefall.data.tokenizer import set_model_dims_from_bpe
from icefall.decode.search import decode_batch
from icefall.inference import INFO_KEYS, model_from_state
from icefall.model_config import MODEL_KEYS, apply_model_config, stored_model_config
from icefall.token_table import set_dims_from_tokens, tokens_to_text


def read_sound_file(path: Path, sample_rate: int) -> Tensor:
    """Mono float32 samples (S,) of ``path`` at ``sample_rate`` (see
    :func:`icefall.audio.read_sound_file`, the torch-free reader)."""
    return torch.from_numpy(read_samples(path, sample_rate))


def compute_features(waves: list[Tensor], sample_rate: int,
                     num_mel_bins: int = NUM_MEL_BINS) -> tuple[Tensor, Tensor]:
    """Fbank of each wave, padded with log(1e-10) as icefall pads.

    Returns:
      features (N, T, F) and lengths (N,), F = ``num_mel_bins``.
    """
    extractor = make_fbank_extractor(num_mel_bins)
    feats = [torch.as_tensor(np.asarray(extractor.extract(w.numpy(), sample_rate)))
             for w in waves]
    lens = torch.tensor([f.shape[0] for f in feats])
    padded = nn.utils.rnn.pad_sequence(feats, batch_first=True, padding_value=np.log(1e-10))
    return padded, lens


def transcribe(model: nn.Module, to_text: Callable[[list[list[int]]], list[str]],
               waves: list[Tensor], sample_rate: int, method: str, beam_size: int = 4,
               max_sym_per_frame: int = 1) -> list[str]:
    """Text of each wave; ``to_text`` turns token-id lists into texts."""
    feats, lens = compute_features(waves, sample_rate, model.encoder_embed.in_channels)
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(feats, lens)
        hyps = decode_batch(model, enc, enc_lens, method, beam_size=beam_size,
                            max_sym_per_frame=max_sym_per_frame)
    return to_text(hyps)


def text_decoder(params: dict[str, Any]) -> Callable[[list[list[int]]], list[str]]:
    """Token ids -> texts from ``params["tokens"]`` (tokens.txt, icefall's pretrained.py)
    or ``params["bpe_model"]``; sets vocab_size and blank_id in ``params`` from it."""
    if params.get("tokens"):
        tokens = set_dims_from_tokens(params, params["tokens"])
        return lambda hyps: [tokens_to_text(h, tokens) for h in hyps]
    sp = load_bpe_model(params["bpe_model"])
    set_model_dims_from_bpe(params, sp)
    return sp.decode


def transcribe_files(params: Mapping[str, Any]) -> list[str]:
    """pretrained.py: the text of each of ``params["sound_files"]`` with the checkpoint
    ``params["checkpoint"]`` (a whole model, or adapters only with their base found as
    decoding finds it), the ``adapter_file`` files and ``adapter_name``
    (:mod:`icefall.inference`), and ``params["tokens"]`` (or the BPE model
    ``params["bpe_model"]``)."""
    params = dict(params)
    to_text = text_decoder(params)
    waves = [read_sound_file(p, params["sample_rate"]) for p in params["sound_files"]]
    data = load_checkpoint_file(params["checkpoint"], allow_unsafe=params["trust_checkpoint"])
    state = strip_ddp_prefix(model_state_from(data, params["checkpoint"]))
    stored = stored_model_config(data)
    apply_model_config(params, stored, MODEL_KEYS, params["checkpoint"])  # logs nothing
    info = {k: data[k] for k in INFO_KEYS if k in data}
    model = model_from_state(params, state, str(params["checkpoint"]), info, stored).eval()
    return transcribe(model, to_text, waves, params["sample_rate"], params["method"],
                      params["beam_size"], params["max_sym_per_frame"])
