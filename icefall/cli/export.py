"""export-onnx.py and export-adapter.py of the recipes: flags and ``main`` (the exports are
:mod:`icefall.export.onnx` and :mod:`icefall.export.adapter`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from icefall.cli import run_guarded
from icefall.cli.flags import ArgumentParser, str2bool
from icefall.cli.model import (
    add_adapter_arguments,
    add_checkpoint_arguments,
    add_model_arguments,
    check_name,
    resolve_adapter_switches,
)
from icefall.export.adapter import export_adapter
from icefall.export.onnx import ExportedFiles, export_checkpoint
from icefall.utils import setup_logger


def _add_tokens_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--tokens", type=Path, default=Path("data/lang_bpe_500/tokens.txt"),
                        help=f"Path to tokens.txt ({what}).")


def get_parser(exp_dir: str, use_adapters_default: bool,
               use_lora_default: bool = False) -> argparse.ArgumentParser:
    parser = ArgumentParser()
    add_checkpoint_arguments(parser, exp_dir, epoch=28, avg=15)
    _add_tokens_argument(parser, "copied into --exp-dir")
    parser.add_argument("--int8", type=str2bool, default=True,
                        help="Also write .int8.onnx (dynamic quantisation) files.")
    add_model_arguments(parser)
    add_adapter_arguments(parser, use_adapters_default, use_lora_default, inference=True)
    return parser


def main(exp_dir: str, use_adapters_default: bool, argv: list[str] | None = None,
         use_lora_default: bool = False) -> ExportedFiles:
    """export-onnx.py; bad input is one line on stderr and exit status 1."""
    args = get_parser(exp_dir, use_adapters_default, use_lora_default).parse_args(argv)
    resolve_adapter_switches(args, use_adapters_default, use_lora_default)
    setup_logger()
    return run_guarded(export_checkpoint, vars(args))


def get_adapter_parser(exp_dir: str, use_lora_default: bool = False
                       ) -> argparse.ArgumentParser:
    parser = ArgumentParser()
    add_checkpoint_arguments(parser, exp_dir)
    _add_tokens_argument(parser, "for the vocabulary size")
    parser.add_argument("--adapter-out", type=Path, default=None,
                        help="Where to write the adapter file; default "
                             "<exp-dir>/adapter-<name>.pt.")
    parser.add_argument("--new-adapter-name", type=check_name, default=None,
                        help="Name the written adapter this (default: its own name).")
    add_model_arguments(parser)
    add_adapter_arguments(parser, True, use_lora_default, inference=True)
    return parser


def adapter_main(exp_dir: str, argv: list[str] | None = None,
                 use_lora_default: bool = False) -> Path:
    """export-adapter.py: the (averaged) adapter of the chosen checkpoints as an adapter
    file; bad input is one line on stderr and exit status 1."""
    args = get_adapter_parser(exp_dir, use_lora_default).parse_args(argv)
    resolve_adapter_switches(args, True, use_lora_default)
    setup_logger()
    return run_guarded(export_adapter, vars(args))
