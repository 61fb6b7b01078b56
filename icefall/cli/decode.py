"""decode.py, decode_gigaspeech.py and onnx_decode.py of both recipes: flags and ``main``.

A recipe script names its defaults (folder, adapters on or off, test sets, whether
GigaSpeech scoring applies) in a :class:`DecodeRecipe`; decoding itself is
:mod:`icefall.decode.recipe`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icefall.cli import run_guarded
from icefall.cli.dataloading import add_dataloading_arguments
from icefall.cli.flags import ArgumentParser, finite_float, positive_float, positive_int, str2bool
from icefall.cli.model import (
    add_adapter_arguments,
    add_checkpoint_arguments,
    add_model_arguments,
    resolve_adapter_switches,
)
from icefall.cli.onnx import add_onnx_model_arguments
from icefall.decode.recipe import decode_checkpoint, decode_onnx
from icefall.decode.search import DECODING_METHODS


@dataclass(frozen=True)
class DecodeRecipe:
    """Flag defaults of one decode script."""

    exp_dir: str
    use_adapters: bool
    test_sets: str  # NAME=MANIFEST pairs in --manifest-dir
    gigaspeech_scoring: bool
    use_lora: bool = False


def add_test_set_arguments(parser: argparse.ArgumentParser, recipe: DecodeRecipe) -> None:
    """--test-sets and --res-dir."""
    parser.add_argument("--test-sets", type=str, default=recipe.test_sets,
                        help="Comma-separated NAME=MANIFEST pairs (manifests in "
                             "--manifest-dir).")
    parser.add_argument("--res-dir", type=Path, default=None,
                        help="Where reports go; default <exp-dir>/<decoding-method>.")


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """icefall's search flags."""
    a = parser.add_argument
    a("--bpe-model", type=Path, default=Path("data/lang_bpe_500/bpe.model"),
      help="Path to the BPE model.")
    a("--decoding-method", type=str, default="greedy_search", choices=DECODING_METHODS,
      help="Search; fast_beam_search needs k2.")
    a("--beam-size", type=positive_int, default=4, help="Beam size of (modified) beam search.")
    a("--beam", type=positive_float, default=20.0, help="fast_beam_search: beam.")
    a("--max-contexts", type=positive_int, default=8, help="fast_beam_search: max contexts.")
    a("--max-states", type=positive_int, default=64, help="fast_beam_search: max states.")
    a("--max-sym-per-frame", type=positive_int, default=1, help="greedy_search: symbols per frame.")
    a("--blank-penalty", type=finite_float, default=0.0, help="Subtracted from blank's logit.")


def get_parser(recipe: DecodeRecipe) -> argparse.ArgumentParser:
    parser = ArgumentParser()
    add_checkpoint_arguments(parser, recipe.exp_dir)
    add_decoding_arguments(parser)
    add_test_set_arguments(parser, recipe)
    add_model_arguments(parser)
    add_adapter_arguments(parser, recipe.use_adapters, recipe.use_lora, inference=True)
    add_dataloading_arguments(parser)
    return parser


def main(recipe: DecodeRecipe, argv: list[str] | None = None) -> dict[str, Any]:
    """decode.py; returns {test set: [(key, WER)]}. Bad input is one line on stderr and
    exit status 1."""
    args = get_parser(recipe).parse_args(argv)
    resolve_adapter_switches(args, recipe.use_adapters, recipe.use_lora)
    return run_guarded(decode_checkpoint, vars(args), recipe.gigaspeech_scoring)


def get_onnx_parser(recipe: DecodeRecipe) -> argparse.ArgumentParser:
    parser = ArgumentParser()
    add_onnx_model_arguments(parser)
    a = parser.add_argument
    a("--exp-dir", type=Path, default=Path(recipe.exp_dir),
      help="Reports go to <exp-dir>/onnx-<decoding-method> unless --res-dir is given.")
    a("--decoding-method", type=str, default="greedy_search", choices=("greedy_search",),
      help="Search (greedy, as sherpa-onnx's default).")
    a("--gigaspeech-scoring", type=str2bool, default=recipe.gigaspeech_scoring,
      help="Normalise references and hypotheses as GigaSpeech scoring does.")
    add_test_set_arguments(parser, recipe)
    add_dataloading_arguments(parser)
    return parser


def onnx_main(recipe: DecodeRecipe, argv: list[str] | None = None) -> dict[str, Any]:
    """onnx_decode.py; returns {test set: [(key, WER)]}."""
    args = get_onnx_parser(recipe).parse_args(argv)
    return run_guarded(decode_onnx, vars(args))
