"""Transcribing sound files with a TorchScript model (``jit_pretrained.py``).

The model is ``export.py --jit 1``'s ``jit_script.pt`` (or icefall's own: the same
interface, :mod:`icefall.export.torchscript`): ``encoder(features, feature_lengths)``,
``decoder(y, need_pad)`` and ``joiner(encoder_out, decoder_out, project_input)``. The
search is greedy, one symbol per frame, as icefall's ``jit_pretrained.py`` and
``pretrained.py --method greedy_search`` decode; features are those of ``pretrained.py``.

Dimension legend: N = utterances, T = encoder frames, C = encoder output dim,
J = joiner dim, K = decoder context size.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from icefall.data.fbank import NUM_MEL_BINS
from icefall.decode.transcribe import compute_features, read_sound_file
from icefall.token_table import read_token_table, tokens_to_text


def load_jit_model(path: str | Path, device: torch.device | str = "cpu"
                   ) -> torch.jit.ScriptModule:
    """``torch.jit.load`` with a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TorchScript model not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's notice
            model = torch.jit.load(str(path), map_location=device)
    except RuntimeError as e:
        raise ValueError(f"{path} is not a TorchScript model (write one with export.py "
                         f"--jit 1): {str(e).splitlines()[0]}") from e
    for name in ("encoder", "decoder", "joiner"):
        if not hasattr(model, name):
            raise ValueError(f"{path} has no '{name}': not a transducer of export.py --jit 1")
    return model.eval()


@torch.inference_mode()
def jit_greedy_search(model: torch.jit.ScriptModule, encoder_out: Tensor,
                      encoder_out_lens: Tensor) -> list[list[int]]:
    """Batched greedy search, one symbol per frame, on a TorchScript transducer.

    Args:
      encoder_out: (N, T, C); encoder_out_lens: (N,) valid frames, >= 1.
    Returns:
      N token-id lists in the caller's order.
    """
    blank_id, K = int(model.decoder.blank_id), int(model.decoder.context_size)
    device = encoder_out.device
    N, T = encoder_out.shape[:2]
    lens = encoder_out_lens.tolist()
    order = sorted(range(N), key=lambda n: -lens[n])  # longest first
    enc = model.joiner.encoder_proj(encoder_out[order])  # (N, T, J)
    hyps = [[-1] * (K - 1) + [blank_id] for _ in range(N)]
    context = torch.tensor(hyps, dtype=torch.int64, device=device)  # (N, K)
    dec = model.joiner.decoder_proj(model.decoder(context, need_pad=False)[:, 0])  # (N, J)
    sorted_lens = [lens[n] for n in order]
    for t in range(T):
        active = sum(1 for n in sorted_lens if n > t)
        logits = model.joiner(enc[:active, t], dec[:active], project_input=False)
        tokens = logits.argmax(dim=-1).tolist()
        emitted = [i for i, y in enumerate(tokens) if y != blank_id]
        if not emitted:
            continue
        for i in emitted:
            hyps[i].append(tokens[i])
        rows = torch.tensor(emitted, device=device)
        context = torch.tensor([hyps[i][-K:] for i in emitted], device=device)
        new = model.joiner.decoder_proj(model.decoder(context, need_pad=False)[:, 0])
        dec = dec.index_copy(0, rows, new)
    out: list[list[int]] = [[] for _ in range(N)]
    for i, n in enumerate(order):
        out[n] = hyps[i][K:]
    return out


def transcribe_jit_files(params: Mapping[str, Any]) -> list[str]:
    """jit_pretrained.py: the text of each of ``params["sound_files"]`` with the
    TorchScript model ``params["nn_model_filename"]`` and ``params["tokens"]`` (on the
    first GPU when there is one)."""
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    tokens = read_token_table(params["tokens"])
    model = load_jit_model(params["nn_model_filename"], device)
    rate = params.get("sample_rate", 16000)
    waves = [read_sound_file(p, rate) for p in params["sound_files"]]
    # F: the mel bins the file's encoder takes (icefall's files do not say: 80)
    feats, lens = compute_features(waves, rate, int(getattr(model.encoder, "feature_dim",
                                                            NUM_MEL_BINS)))
    with torch.inference_mode():
        enc, enc_lens = model.encoder(features=feats.to(device),
                                      feature_lengths=lens.to(device))
        hyps = jit_greedy_search(model, enc, enc_lens)
    return [tokens_to_text(h, tokens) for h in hyps]
