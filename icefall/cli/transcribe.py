"""pretrained.py of both recipes: transcribe sound files with a checkpoint, one
``<file>: <text>`` line per file on stdout (onnx_pretrained.py: :mod:`icefall.cli.onnx`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from icefall.audio import SAMPLE_RATE
from icefall.cli import run_guarded
from icefall.cli.flags import ArgumentParser, positive_int, str2bool
from icefall.cli.model import add_adapter_arguments, add_model_arguments, resolve_adapter_switches
from icefall.cli.onnx import print_texts
from icefall.decode.search import DECODING_METHODS


def get_parser(use_adapters_default: bool,
               use_lora_default: bool = False) -> argparse.ArgumentParser:
    parser = ArgumentParser()
    a = parser.add_argument
    a("--checkpoint", type=Path, required=True,
      help="A checkpoint with a 'model' state dict (pretrained.pt, epoch-N.pt, ...; an "
           "adapter-only one finds its base as decode.py does).")
    a("--bpe-model", type=Path, required=True, help="Path to the BPE model.")
    a("--method", type=str, default="greedy_search", choices=DECODING_METHODS,
      help="Decoding method.")
    a("--sample-rate", type=positive_int, default=SAMPLE_RATE,
      help="Sample rate of the model's features.")
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

    args = get_parser(use_adapters_default, use_lora_default).parse_args(argv)
    resolve_adapter_switches(args, use_adapters_default, use_lora_default)
    logging.basicConfig(level=logging.WARNING)
    return print_texts(args.sound_files, run_guarded(transcribe_files, vars(args)))
