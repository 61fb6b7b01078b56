"""pretrained.py: transcribe sound files with a checkpoint and a BPE model.

Features are 80-bin kaldi-compatible fbank at 16 kHz (lhotse's ``Fbank``, the same
extractor as training; kaldifeat's when it imports). Prints ``<file>: <text>`` per file.

Dimension legend: N = files, T = frames, S = samples.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from icefall.checkpoint import CheckpointError, load_checkpoint_file, model_state_from
from icefall.cli.flags import str2bool
from icefall.data import load_bpe_model, make_fbank_extractor
from icefall.decode.search import DECODING_METHODS, decode_batch
from icefall.export.onnx_runtime import read_sound_file as read_samples
from icefall.finetune import strip_ddp_prefix
from icefall.inference import model_from_state, set_model_dims_from_bpe
from icefall.zipformer import add_adapter_arguments, add_model_arguments


def get_parser(use_adapters_default: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = parser.add_argument
    a("--checkpoint", type=Path, required=True,
      help="A checkpoint with a 'model' state dict (pretrained.pt, epoch-N.pt, ...).")
    a("--bpe-model", type=Path, required=True, help="Path to the BPE model.")
    a("--method", type=str, default="greedy_search", choices=DECODING_METHODS,
      help="Decoding method.")
    a("--sample-rate", type=int, default=16000, help="Sample rate of the model's features.")
    a("--beam-size", type=int, default=4, help="Beam size of (modified) beam search.")
    a("--max-sym-per-frame", type=int, default=1, help="greedy_search: symbols per frame.")
    a("--trust-checkpoint", type=str2bool, default=False,
      help="Allow checkpoints that need full unpickling (only for files you trust).")
    a("sound_files", type=Path, nargs="+", help="Sound files (any format libsndfile reads).")
    add_model_arguments(parser)
    add_adapter_arguments(parser, use_adapters_default=use_adapters_default)
    return parser


def read_sound_file(path: Path, sample_rate: int) -> Tensor:
    """Mono float32 samples (S,) of ``path`` at ``sample_rate`` (see
    :func:`icefall.export.onnx_runtime.read_sound_file`, the torch-free reader)."""
    return torch.from_numpy(read_samples(path, sample_rate))


def compute_features(waves: list[Tensor], sample_rate: int) -> tuple[Tensor, Tensor]:
    """Fbank of each wave, padded with log(1e-10) as icefall pads.

    Returns:
      features (N, T, 80) and lengths (N,).
    """
    extractor = make_fbank_extractor()
    feats = [torch.as_tensor(np.asarray(extractor.extract(w.numpy(), sample_rate)))
             for w in waves]
    lens = torch.tensor([f.shape[0] for f in feats])
    padded = nn.utils.rnn.pad_sequence(feats, batch_first=True, padding_value=np.log(1e-10))
    return padded, lens


def transcribe(model: nn.Module, sp, waves: list[Tensor], sample_rate: int, method: str,
               beam_size: int = 4, max_sym_per_frame: int = 1) -> list[str]:
    """Text of each wave."""
    feats, lens = compute_features(waves, sample_rate)
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(feats, lens)
        hyps = decode_batch(model, enc, enc_lens, method, beam_size=beam_size,
                            max_sym_per_frame=max_sym_per_frame)
    return sp.decode(hyps)


def run(args: argparse.Namespace) -> list[str]:
    params = dict(vars(args))
    sp = load_bpe_model(args.bpe_model)
    set_model_dims_from_bpe(params, sp)
    waves = [read_sound_file(p, args.sample_rate) for p in args.sound_files]
    data = load_checkpoint_file(args.checkpoint, allow_unsafe=args.trust_checkpoint)
    state = strip_ddp_prefix(model_state_from(data, args.checkpoint))
    model = model_from_state(params, state, str(args.checkpoint)).eval()
    texts = transcribe(model, sp, waves, args.sample_rate, args.method, args.beam_size,
                       args.max_sym_per_frame)
    for path, text in zip(args.sound_files, texts):
        print(f"{path}: {text}")
    return texts


def main(use_adapters_default: bool, argv: list[str] | None = None) -> list[str]:
    """One line per file on stdout; bad input is one line on stderr and exit status 1."""
    args = get_parser(use_adapters_default).parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        return run(args)
    except (ValueError, OSError, CheckpointError) as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(1)
