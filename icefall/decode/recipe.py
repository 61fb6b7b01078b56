"""decode.py and decode_gigaspeech.py of both recipes: one implementation.

For each test set, writes icefall's ``recogs-``, ``errs-`` and ``wer-summary-`` files to
``<exp-dir>/<decoding-method>/`` and logs the ``For <set>, WER of different settings
are:`` block. ``decode_gigaspeech.py`` first normalises references and hypotheses as
GigaSpeech's scoring does (see :mod:`icefall.decode.gigaspeech_scoring`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from icefall.checkpoint import CheckpointError
from icefall.data import AsrDataModule, load_bpe_model, load_cuts
from icefall.decode.gigaspeech_scoring import post_processing
from icefall.decode.report import save_results
from icefall.decode.search import DECODING_METHODS, decode_batch, decoding_key
from icefall.inference import (
    add_checkpoint_arguments,
    checkpoint_suffix,
    load_model,
    set_model_dims_from_bpe,
)
from icefall.utils import setup_logger
from icefall.zipformer import add_adapter_arguments, add_model_arguments

Result = tuple[str, list[str], list[str]]


@dataclass(frozen=True)
class DecodeRecipe:
    """Flag defaults of one decode script."""

    exp_dir: str
    use_adapters: bool
    test_sets: str
    gigaspeech_scoring: bool


LIBRISPEECH_SETS = ("test-clean=librispeech_cuts_test-clean.jsonl.gz,"
                    "test-other=librispeech_cuts_test-other.jsonl.gz")
GIGASPEECH_SETS = "dev=gigaspeech_cuts_DEV.jsonl.gz,test=gigaspeech_cuts_TEST.jsonl.gz"


def add_decoding_arguments(parser: argparse.ArgumentParser, recipe: DecodeRecipe) -> None:
    a = parser.add_argument
    a("--bpe-model", type=Path, default=Path("data/lang_bpe_500/bpe.model"),
      help="Path to the BPE model.")
    a("--decoding-method", type=str, default="greedy_search", choices=DECODING_METHODS,
      help="Search; fast_beam_search needs k2.")
    a("--beam-size", type=int, default=4, help="Beam size of (modified) beam search.")
    a("--beam", type=float, default=20.0, help="fast_beam_search: beam.")
    a("--max-contexts", type=int, default=8, help="fast_beam_search: max contexts.")
    a("--max-states", type=int, default=64, help="fast_beam_search: max states.")
    a("--max-sym-per-frame", type=int, default=1, help="greedy_search: symbols per frame.")
    a("--blank-penalty", type=float, default=0.0, help="Subtracted from blank's logit.")
    a("--test-sets", type=str, default=recipe.test_sets,
      help="Comma-separated NAME=MANIFEST pairs (manifests in --manifest-dir).")
    a("--res-dir", type=Path, default=None,
      help="Where reports go; default <exp-dir>/<decoding-method>.")


def get_parser(recipe: DecodeRecipe) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_checkpoint_arguments(parser, recipe.exp_dir)
    add_decoding_arguments(parser, recipe)
    add_model_arguments(parser)
    add_adapter_arguments(parser, use_adapters_default=recipe.use_adapters)
    AsrDataModule.add_arguments(parser)
    return parser


def parse_test_sets(value: str) -> list[tuple[str, str]]:
    """``"dev=a.jsonl.gz,test=b.jsonl.gz"`` -> ``[("dev", "a..."), ("test", "b...")]``."""
    pairs = []
    for item in value.split(","):
        name, sep, manifest = item.strip().partition("=")
        if not sep or not name or not manifest:
            raise ValueError(f"--test-sets: expected NAME=MANIFEST pairs, got '{item}'")
        pairs.append((name.strip(), manifest.strip()))
    return pairs


def results_suffix(params: dict[str, Any]) -> str:
    """icefall's ``params.suffix``: the model tag plus the search settings."""
    suffix = checkpoint_suffix(params)
    if params["decoding_method"] in ("beam_search", "modified_beam_search"):
        suffix += f"-{params['decoding_method']}-beam-size-{params['beam_size']}"
    else:
        suffix += f"-context-{params['context_size']}"
        suffix += f"-max-sym-per-frame-{params['max_sym_per_frame']}"
    return suffix


def decode_dataset(dl, params: dict[str, Any], model: nn.Module, sp) -> list[Result]:
    """(cut_id, ref_words, hyp_words) for every utterance of a test DataLoader."""
    device = next(model.parameters()).device
    results: list[Result] = []
    for batch in dl:
        feats = batch["inputs"].to(device, non_blocking=True)
        lens = batch["supervisions"]["num_frames"]  # the model reads them on the host
        with torch.no_grad():
            enc, enc_lens = model.forward_encoder(feats, lens)
            hyps = decode_batch(model, enc, enc_lens, params["decoding_method"],
                                beam_size=params["beam_size"],
                                max_sym_per_frame=params["max_sym_per_frame"],
                                blank_penalty=params["blank_penalty"], beam=params["beam"],
                                max_contexts=params["max_contexts"],
                                max_states=params["max_states"])
        texts = sp.decode(hyps)
        cut_ids = [c.id for c in batch["supervisions"]["cut"]]
        for cid, ref, hyp in zip(cut_ids, batch["supervisions"]["text"], texts):
            results.append((cid, ref.split(), hyp.split()))
    return results


def _check_not_empty(cuts, name: str, path: Path) -> None:
    if next(iter(cuts), None) is None:
        raise ValueError(f"test set '{name}' ({path}) has no cuts")


def run(recipe: DecodeRecipe, args: argparse.Namespace) -> dict[str, list[tuple[str, float]]]:
    """Decodes every test set; returns {test set: [(key, WER)]}."""
    params = dict(vars(args))
    params["return_cuts"] = True
    sp = load_bpe_model(params["bpe_model"])
    set_model_dims_from_bpe(params, sp)
    test_sets = parse_test_sets(params["test_sets"])
    manifests = {n: Path(params["manifest_dir"]) / m for n, m in test_sets}
    cuts = {n: load_cuts(p) for n, p in manifests.items()}
    for n, c in cuts.items():
        _check_not_empty(c, n, manifests[n])
    res_dir = params["res_dir"] or Path(params["exp_dir"]) / params["decoding_method"]
    suffix = results_suffix(params)
    setup_logger(Path(res_dir) / f"log-decode-{suffix}")
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    model = load_model(params, device)
    dm = AsrDataModule(params)
    key = decoding_key(params["decoding_method"], params["beam_size"], params["beam"],
                       params["max_contexts"], params["max_states"])
    wers = {}
    for name, c in cuts.items():
        results = decode_dataset(dm.test_dataloaders(c), params, model, sp)
        if recipe.gigaspeech_scoring:
            results = post_processing(results)
        wers[name] = save_results(res_dir, name, {key: results}, suffix=f"{key}-{suffix}")
    logging.info("Done!")
    return wers


def main(recipe: DecodeRecipe, argv: list[str] | None = None) -> dict[str, Any]:
    """Parses flags and decodes; bad input is one line on stderr and exit status 1."""
    args = get_parser(recipe).parse_args(argv)
    try:
        return run(recipe, args)
    except (ValueError, OSError, CheckpointError, ImportError) as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(1)


BASE_DECODE = DecodeRecipe("zipformer/exp", False, LIBRISPEECH_SETS, False)
BASE_DECODE_GIGASPEECH = DecodeRecipe("zipformer/exp", False, GIGASPEECH_SETS, True)
ADAPTER_DECODE = DecodeRecipe("zipformer_adapter/exp", True, LIBRISPEECH_SETS, False)
ADAPTER_DECODE_GIGASPEECH = DecodeRecipe("zipformer_adapter/exp", True, GIGASPEECH_SETS, True)
