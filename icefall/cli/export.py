"""export-onnx.py, export-onnx-streaming.py, export-onnx-ctc.py, export.py and
export-adapter.py of the recipes: flags and ``main`` (the exports are
:mod:`icefall.export.onnx`, :mod:`icefall.export.onnx_streaming`,
:mod:`icefall.export.torchscript` and :mod:`icefall.export.adapter`)."""

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
    given_flags,
    parse_with_given_flags,
    resolve_adapter_switches,
)
from icefall.export.adapter import export_adapter
from icefall.export.onnx import ExportedFiles, export_checkpoint
from icefall.export.onnx_streaming import export_streaming_checkpoint
from icefall.utils import setup_logger


def _add_tokens_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--tokens", type=Path, default=Path("data/lang_bpe_500/tokens.txt"),
                        help=f"Path to tokens.txt ({what}).")


def get_parser(exp_dir: str, use_adapters_default: bool,
               use_lora_default: bool = False) -> argparse.ArgumentParser:
    parser = ArgumentParser()
    add_checkpoint_arguments(parser, exp_dir, epoch=28, avg=15)
    _add_tokens_argument(parser, "copied into --exp-dir")
    parser.add_argument("--int8", "--enable-int8-quantization", dest="int8", type=str2bool,
                        default=True,
                        help="Also write .int8.onnx (dynamic quantisation) files.")
    add_model_arguments(parser)
    add_adapter_arguments(parser, use_adapters_default, use_lora_default, inference=True)
    return parser


def main(exp_dir: str, use_adapters_default: bool, argv: list[str] | None = None,
         use_lora_default: bool = False) -> ExportedFiles:
    """export-onnx.py; bad input is one line on stderr and exit status 1."""
    parser = get_parser(exp_dir, use_adapters_default, use_lora_default)
    args = resolve_adapter_switches(parser.parse_args(argv), use_adapters_default,
                                    use_lora_default)
    params = {**vars(args), "given_flags": given_flags(parser, argv)}
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
    params["given_flags"].append("use_ctc")  # the script's own: the model needs a CTC head
    setup_logger()
    return run_guarded(export_ctc_checkpoint, params)


def streaming_main(exp_dir: str, use_adapters_default: bool,
                   argv: list[str] | None = None) -> ExportedFiles:
    """export-onnx-streaming.py (the model flags --causal 1 and one --chunk-size and
    --left-context-frames to stream with); bad input is one line on stderr and exit
    status 1."""
    parser = get_parser(exp_dir, use_adapters_default)
    args = resolve_adapter_switches(parser.parse_args(argv), use_adapters_default)
    params = {**vars(args), "given_flags": given_flags(parser, argv)}
    setup_logger()
    return run_guarded(export_streaming_checkpoint, params)


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
    parser = get_adapter_parser(exp_dir, use_lora_default)
    args = resolve_adapter_switches(parser.parse_args(argv), True, use_lora_default)
    params = {**vars(args), "given_flags": given_flags(parser, argv)}
    setup_logger()
    return run_guarded(export_adapter, params)
