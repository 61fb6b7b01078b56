"""decode.py, decode_gigaspeech.py, streaming_decode.py and onnx_decode.py of both recipes:
flags and ``main``.

A recipe script names its defaults (folder, adapters on or off, test sets, whether
GigaSpeech scoring applies) in a :class:`DecodeRecipe`; decoding itself is
:mod:`icefall.decode.recipe`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
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
    given_flags,
    parse_with_given_flags,
    resolve_adapter_switches,
)
from icefall.cli.onnx import add_onnx_model_arguments
from icefall.decode.recipe import (
    CTC_DECODING_METHODS,
    decode_checkpoint,
    decode_ctc_checkpoint,
    decode_onnx,
)
from icefall.decode.search import DECODING_METHODS
from icefall.decode.streaming import STREAMING_METHODS
from icefall.decode.streaming_recipe import decode_streaming_checkpoint


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
    a("--context-file", type=Path, default=None,
      help="Context biasing of modified_beam_search: a file of words or phrases, one a "
           "line, favoured by an Aho-Corasick graph over their BPE pieces.")
    a("--context-score", type=finite_float, default=2.0,
      help="Bonus per BPE piece of a matched --context-file phrase.")


def get_parser(recipe: DecodeRecipe) -> argparse.ArgumentParser:
    parser = ArgumentParser()
    add_checkpoint_arguments(parser, recipe.exp_dir)
    add_decoding_arguments(parser)
    add_test_set_arguments(parser, recipe)
    add_model_arguments(parser)
    add_adapter_arguments(parser, recipe.use_adapters, recipe.use_lora, inference=True)
    add_dataloading_arguments(parser)
    return parser


def print_wers(wers: Mapping[str, list[tuple[str, float]]]) -> None:
    """``<set>: WER <wer>% (<key>)`` on stdout for each test set (the best key first), so
    that every decoding script shows its result without reading the log."""
    for name, items in wers.items():
        for key, wer in items:
            print(f"{name}: WER {wer:.2f}% ({key})")


def main(recipe: DecodeRecipe, argv: list[str] | None = None) -> dict[str, Any]:
    """decode.py; prints and returns {test set: [(key, WER)]}. Bad input is one line on
    stderr and exit status 1."""
    parser = get_parser(recipe)
    args = parser.parse_args(argv)
    resolve_adapter_switches(args, recipe.use_adapters, recipe.use_lora)
    params = vars(args)
    params["given_flags"] = given_flags(parser, argv)
    wers = run_guarded(decode_checkpoint, params, recipe.gigaspeech_scoring)
    print_wers(wers)
    return wers


def get_ctc_parser(recipe: DecodeRecipe) -> argparse.ArgumentParser:
    """ctc_decode.py: icefall's flags for the CTC searches that need no k2."""
    parser = ArgumentParser()
    add_checkpoint_arguments(parser, recipe.exp_dir)
    a = parser.add_argument
    a("--bpe-model", type=Path, default=Path("data/lang_bpe_500/bpe.model"),
      help="Path to the BPE model.")
    a("--decoding-method", type=str, default="ctc-greedy-search",
      choices=CTC_DECODING_METHODS, help="CTC search.")
    a("--beam", type=positive_int, default=4,
      help="ctc-prefix-beam-search: symbols tried per frame and prefixes kept.")
    add_test_set_arguments(parser, recipe)
    add_model_arguments(parser)
    parser.set_defaults(use_ctc=True)  # the script decodes the CTC head
    add_adapter_arguments(parser, use_adapters_default=recipe.use_adapters)
    add_dataloading_arguments(parser)
    return parser


def add_streaming_arguments(parser: argparse.ArgumentParser, recipe: DecodeRecipe) -> None:
    """icefall's streaming_decode.py flags (the chunk size and left context are the model
    flags --chunk-size and --left-context-frames, one value each)."""
    a = parser.add_argument
    a("--bpe-model", type=Path, default=Path("data/lang_bpe_500/bpe.model"),
      help="Path to the BPE model.")
    a("--decoding-method", type=str, default="greedy_search", choices=STREAMING_METHODS,
      help="Search, run chunk by chunk.")
    a("--num-active-paths", "--num_active_paths", "--beam-size", dest="num_active_paths",
      type=positive_int, default=4,
      help="modified_beam_search: hypotheses kept per stream.")
    a("--num-decode-streams", type=positive_int, default=2000,
      help="Streams (utterances) decoded in parallel.")
    a("--blank-penalty", type=finite_float, default=0.0, help="Subtracted from blank's logit.")
    a("--label", type=str, default="", help="Extra label of the decoding run (in file names).")
    a("--gigaspeech-scoring", type=str2bool, default=recipe.gigaspeech_scoring,
      help="Normalise references and hypotheses as GigaSpeech scoring does.")


def get_streaming_parser(recipe: DecodeRecipe) -> argparse.ArgumentParser:
    parser = ArgumentParser()
    add_checkpoint_arguments(parser, recipe.exp_dir)
    add_streaming_arguments(parser, recipe)
    parser.add_argument("--test-sets", type=str, default=recipe.test_sets,
                        help="Comma-separated NAME=MANIFEST pairs (manifests in "
                             "--manifest-dir).")
    parser.add_argument("--res-dir", type=Path, default=None,
                        help="Where reports go; default "
                             "<exp-dir>/streaming/<decoding-method>.")
    add_model_arguments(parser)
    add_adapter_arguments(parser, use_adapters_default=recipe.use_adapters)
    add_dataloading_arguments(parser)
    return parser


def ctc_main(recipe: DecodeRecipe, argv: list[str] | None = None) -> dict[str, Any]:
    """ctc_decode.py; returns {test set: [(key, WER)]}."""
    params = parse_with_given_flags(get_ctc_parser(recipe), argv)
    params["given_flags"].append("use_ctc")  # the script's own: the model needs a CTC head
    return run_guarded(decode_ctc_checkpoint, params)


def streaming_main(recipe: DecodeRecipe, argv: list[str] | None = None) -> dict[str, Any]:
    """streaming_decode.py; returns {test set: [(key, WER)]}."""
    params = parse_with_given_flags(get_streaming_parser(recipe), argv)
    return run_guarded(decode_streaming_checkpoint, params)


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
    """onnx_decode.py; prints and returns {test set: [(key, WER)]}."""
    args = get_onnx_parser(recipe).parse_args(argv)
    wers = run_guarded(decode_onnx, vars(args))
    print_wers(wers)
    return wers
