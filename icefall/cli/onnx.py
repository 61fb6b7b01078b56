"""onnx_pretrained.py and onnx_pretrained-streaming.py of both recipes, and the ONNX model
flags: with ONNX Runtime and numpy only (this module and what it imports never import
torch)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from icefall.audio import SAMPLE_RATE
from icefall.cli import run_guarded
from icefall.cli.flags import ArgumentParser, finite_float, nonnegative_float, positive_int


def add_onnx_model_arguments(parser: argparse.ArgumentParser) -> None:
    """icefall's --encoder/--decoder/--joiner-model-filename and --tokens."""
    a = parser.add_argument
    a("--encoder-model-filename", type=Path, required=True,
      help="Path to the encoder ONNX model (encoder-*.onnx or encoder-*.int8.onnx).")
    a("--decoder-model-filename", type=Path, required=True,
      help="Path to the decoder ONNX model.")
    a("--joiner-model-filename", type=Path, required=True,
      help="Path to the joiner ONNX model.")
    a("--tokens", type=Path, required=True, help="Path to tokens.txt.")
    a("--num-threads", type=positive_int, default=1, help="Intra-op threads of each session.")
    a("--blank-penalty", type=finite_float, default=0.0,
      help="Subtracted from the blank logit (sherpa-onnx's blank_penalty).")


def print_texts(paths: list[Path], texts: list[str]) -> list[str]:
    """``<file>: <text>`` per file on stdout; returns the texts."""
    for path, text in zip(paths, texts):
        print(f"{path}: {text}")
    return texts


def get_onnx_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser()
    add_onnx_model_arguments(parser)
    parser.add_argument("--sample-rate", type=positive_int, default=SAMPLE_RATE,
                        help="Sample rate of the model's features; sound files at other rates are "
                             "resampled to it.")
    parser.add_argument("sound_files", type=Path, nargs="+",
                        help="Sound files (any format libsndfile reads), first channel used.")
    return parser


def _onnx_transcribe(params: dict[str, Any]) -> list[str]:
    from icefall.audio import read_sound_file
    from icefall.decode.onnx_runtime import load_onnx_model, transcribe

    model, tokens = load_onnx_model(
        params["encoder_model_filename"], params["decoder_model_filename"],
        params["joiner_model_filename"], params["tokens"], params["num_threads"])
    waves = [read_sound_file(p, params["sample_rate"]) for p in params["sound_files"]]
    return transcribe(model, tokens, waves, params["sample_rate"], params["blank_penalty"])


def onnx_main(argv: list[str] | None = None) -> list[str]:
    """onnx_pretrained.py: ONNX Runtime and numpy only."""
    args = get_onnx_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return print_texts(args.sound_files, run_guarded(_onnx_transcribe, vars(args)))


def get_onnx_streaming_parser() -> argparse.ArgumentParser:
    from icefall.decode.onnx_streaming import TAIL_PADDING

    parser = get_onnx_parser()
    parser.add_argument("--tail-padding", type=nonnegative_float, default=TAIL_PADDING,
                        help="Seconds of silence appended to each file, so that its last "
                             "words fill a chunk (sherpa-onnx's examples append 0.66).")
    return parser


def _onnx_transcribe_streaming(params: dict[str, Any]) -> list[str]:
    from icefall.audio import read_sound_file
    from icefall.decode.onnx_streaming import load_onnx_streaming_model, transcribe_streaming

    model, tokens = load_onnx_streaming_model(
        params["encoder_model_filename"], params["decoder_model_filename"],
        params["joiner_model_filename"], params["tokens"], params["num_threads"])
    waves = [read_sound_file(p, params["sample_rate"]) for p in params["sound_files"]]
    return transcribe_streaming(model, tokens, waves, params["sample_rate"],
                                params["blank_penalty"], params["tail_padding"])


def onnx_streaming_main(argv: list[str] | None = None) -> list[str]:
    """onnx_pretrained-streaming.py: each file streamed chunk by chunk as sherpa-onnx's
    online recognizer streams it; ONNX Runtime and numpy only."""
    args = get_onnx_streaming_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return print_texts(args.sound_files, run_guarded(_onnx_transcribe_streaming, vars(args)))
