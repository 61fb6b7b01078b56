"""export-onnx.py, export-onnx-streaming.py, export-onnx-ctc.py and export.py of both
recipes: flags and ``main`` (the exports are :mod:`icefall.export.onnx`,
:mod:`icefall.export.onnx_streaming` and :mod:`icefall.export.torchscript`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from icefall.cli import run_guarded
from icefall.cli.flags import ArgumentParser, str2bool
from icefall.cli.model import (
    add_adapter_arguments,
    add_checkpoint_arguments,
    add_model_arguments,
    given_flags,
    parse_with_given_flags,
)
from icefall.export.onnx import ExportedFiles, export_checkpoint
from icefall.export.onnx_streaming import export_streaming_checkpoint
from icefall.utils import setup_logger


def get_parser(exp_dir: str, use_adapters_default: bool) -> argparse.ArgumentParser:
    parser = ArgumentParser()
    add_checkpoint_arguments(parser, exp_dir, epoch=28, avg=15)
    parser.add_argument("--tokens", type=Path, default=Path("data/lang_bpe_500/tokens.txt"),
                        help="Path to tokens.txt (copied into --exp-dir).")
    parser.add_argument("--int8", "--enable-int8-quantization", dest="int8", type=str2bool,
                        default=True,
                        help="Also write .int8.onnx (dynamic quantisation) files.")
    add_model_arguments(parser)
    add_adapter_arguments(parser, use_adapters_default=use_adapters_default)
    return parser


def main(exp_dir: str, use_adapters_default: bool,
         argv: list[str] | None = None) -> ExportedFiles:
    """export-onnx.py; bad input is one line on stderr and exit status 1."""
    parser = get_parser(exp_dir, use_adapters_default)
    params = vars(parser.parse_args(argv))
    params["given_flags"] = given_flags(parser, argv)
    setup_logger()
    return run_guarded(export_checkpoint, params)


def get_pytorch_parser(exp_dir: str, use_adapters_default: bool) -> argparse.ArgumentParser:
    """export.py: icefall's flags (--epoch 30 --avg 9 by default, --tokens, --jit)."""
    parser = ArgumentParser()
    add_checkpoint_arguments(parser, exp_dir, epoch=30, avg=9)
    parser.add_argument("--tokens", type=Path, default=Path("data/lang_bpe_500/tokens.txt"),
                        help="Path to tokens.txt (vocab size and blank id).")
    parser.add_argument("--jit", type=str2bool, default=False,
                        help="1: write <exp-dir>/jit_script.pt (TorchScript) for "
                             "jit_pretrained.py; 0: write <exp-dir>/pretrained.pt "
                             "({'model': state_dict}).")
    add_model_arguments(parser)
    add_adapter_arguments(parser, use_adapters_default=use_adapters_default)
    return parser


def pytorch_main(exp_dir: str, use_adapters_default: bool,
                 argv: list[str] | None = None) -> Path:
    """export.py; bad input is one line on stderr and exit status 1."""
    from icefall.export.torchscript import export_model

    params = parse_with_given_flags(get_pytorch_parser(exp_dir, use_adapters_default), argv)
    setup_logger()
    return run_guarded(export_model, params)


def get_ctc_onnx_parser(exp_dir: str) -> argparse.ArgumentParser:
    """export-onnx-ctc.py: icefall's flags (--use-ctc defaults to 1 here)."""
    parser = ArgumentParser()
    add_checkpoint_arguments(parser, exp_dir, epoch=28, avg=15)
    parser.add_argument("--tokens", type=Path, default=Path("data/lang_bpe_500/tokens.txt"),
                        help="Path to tokens.txt (copied into --exp-dir).")
    add_model_arguments(parser)
    parser.set_defaults(use_ctc=True)
    add_adapter_arguments(parser, use_adapters_default=False)
    return parser


def ctc_onnx_main(exp_dir: str, argv: list[str] | None = None) -> tuple[Path, Path]:
    """export-onnx-ctc.py; bad input is one line on stderr and exit status 1."""
    from icefall.export.onnx import export_ctc_checkpoint

    params = parse_with_given_flags(get_ctc_onnx_parser(exp_dir), argv)
    setup_logger()
    return run_guarded(export_ctc_checkpoint, params)


def streaming_main(exp_dir: str, use_adapters_default: bool,
                   argv: list[str] | None = None) -> ExportedFiles:
    """export-onnx-streaming.py (the model flags --causal 1 and one --chunk-size and
    --left-context-frames to stream with); bad input is one line on stderr and exit
    status 1."""
    params = parse_with_given_flags(get_parser(exp_dir, use_adapters_default), argv)
    setup_logger()
    return run_guarded(export_streaming_checkpoint, params)
