"""export-onnx.py of both recipes: flags and ``main`` (the export is
:mod:`icefall.export.onnx`)."""

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
)
from icefall.export.onnx import ExportedFiles, export_checkpoint
from icefall.utils import setup_logger


def get_parser(exp_dir: str, use_adapters_default: bool) -> argparse.ArgumentParser:
    parser = ArgumentParser()
    add_checkpoint_arguments(parser, exp_dir, epoch=28, avg=15)
    parser.add_argument("--tokens", type=Path, default=Path("data/lang_bpe_500/tokens.txt"),
                        help="Path to tokens.txt (copied into --exp-dir).")
    parser.add_argument("--int8", type=str2bool, default=True,
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
