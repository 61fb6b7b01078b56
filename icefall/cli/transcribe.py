"""pretrained.py and jit_pretrained.py of both recipes: transcribe sound files with a
checkpoint or a TorchScript model, one ``<file>: <text>`` line per file on stdout
(onnx_pretrained.py: :mod:`icefall.cli.onnx`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from icefall.audio import SAMPLE_RATE
from icefall.cli import run_guarded
from icefall.cli.flags import ArgumentParser, positive_int, str2bool
from icefall.cli.model import (
    add_adapter_arguments,
    add_model_arguments,
    given_flags,
    resolve_adapter_switches,
)
from icefall.cli.onnx import print_texts
from icefall.decode.search import DECODING_METHODS


def get_parser(use_adapters_default: bool,
               use_lora_default: bool = False) -> argparse.ArgumentParser:
    parser = ArgumentParser()
    a = parser.add_argument
    a("--checkpoint", type=Path, required=True,
      help="A checkpoint with a 'model' state dict (pretrained.pt, epoch-N.pt, ...; an "
           "adapter-only one finds its base as decode.py does).")
    a("--tokens", type=Path, default=None,
      help="Path to tokens.txt (icefall's flag); or give --bpe-model.")
    a("--bpe-model", type=Path, default=None,
      help="Path to the BPE model (instead of --tokens).")
    a("--method", type=str, default="greedy_search", choices=DECODING_METHODS,
      help="Decoding method.")
    a("--sample-rate", type=positive_int, default=SAMPLE_RATE,
      help="Sample rate of the model's features; sound files at other rates are resampled "
           "to it.")
    a("--beam-size", type=positive_int, default=4, help="Beam size of (modified) beam search.")
    a("--max-sym-per-frame", type=positive_int, default=1, help="greedy_search: symbols per frame.")
    a("--trust-checkpoint", type=str2bool, default=False,
      help="Allow checkpoints that need full unpickling (only for files you trust).")
    a("sound_files", type=Path, nargs="+", help="Sound files (any format libsndfile reads).")
    add_model_arguments(parser)
    add_adapter_arguments(parser, use_adapters_default, use_lora_default, inference=True)
    return parser


def main(use_adapters_default: bool, argv: list[str] | None = None,
         use_lora_default: bool = False) -> list[str]:
    """pretrained.py; bad input is one line on stderr and exit status 1."""
    from icefall.decode.transcribe import transcribe_files

    parser = get_parser(use_adapters_default, use_lora_default)
    args = resolve_adapter_switches(parser.parse_args(argv), use_adapters_default,
                                    use_lora_default)
    if (args.tokens is None) == (args.bpe_model is None):
        parser.error("give --tokens (tokens.txt) or --bpe-model, one of them")
    logging.basicConfig(level=logging.WARNING)
    params = {**vars(args), "given_flags": given_flags(parser, argv)}
    return print_texts(args.sound_files, run_guarded(transcribe_files, params))


def get_jit_parser() -> argparse.ArgumentParser:
    """jit_pretrained.py: icefall's flags."""
    parser = ArgumentParser()
    a = parser.add_argument
    a("--nn-model-filename", type=Path, required=True,
      help="The TorchScript model, jit_script.pt of export.py --jit 1.")
    a("--tokens", type=Path, required=True, help="Path to tokens.txt.")
    a("--sample-rate", type=positive_int, default=SAMPLE_RATE,
      help="Sample rate of the model's features.")
    a("sound_files", type=Path, nargs="+", help="Sound files (any format libsndfile reads).")
    return parser


def jit_main(argv: list[str] | None = None) -> list[str]:
    """jit_pretrained.py; bad input is one line on stderr and exit status 1."""
    from icefall.decode.jit import transcribe_jit_files

    args = get_jit_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return print_texts(args.sound_files, run_guarded(transcribe_jit_files, vars(args)))
