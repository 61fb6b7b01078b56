"""onnx_decode.py of both recipes: WER of exported ONNX models on lhotse test sets.

The features come from the test manifests through the same DataLoader as ``decode.py``;
the model runs in ONNX Runtime and the search is :func:`icefall.export.onnx_runtime.
greedy_search` (sherpa-onnx's algorithm). Reports are ``decode.py``'s: ``recogs-``,
``errs-`` and ``wer-summary-<set>-greedy_search-<tag>.txt`` in
``<exp-dir>/onnx-greedy_search/`` (``<tag>`` from the encoder file name, e.g.
``epoch-99-avg-1`` or ``epoch-99-avg-1.int8``) and the ``For <set>, WER of different
settings are:`` log block. With the GigaSpeech defaults (the adapter recipe's),
references and hypotheses are normalised as GigaSpeech scoring does.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from icefall.cli.flags import str2bool
from icefall.data import AsrDataModule, load_cuts
from icefall.decode.gigaspeech_scoring import post_processing
from icefall.decode.recipe import DecodeRecipe, parse_test_sets
from icefall.decode.report import save_results
from icefall.export.onnx_runtime import (
    OnnxTransducer,
    add_onnx_model_arguments,
    greedy_search,
    load_onnx_model,
    token_id,
    tokens_to_text,
)
from icefall.utils import setup_logger

Result = tuple[str, list[str], list[str]]


def get_parser(recipe: DecodeRecipe) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_onnx_model_arguments(parser)
    a = parser.add_argument
    a("--exp-dir", type=Path, default=Path(recipe.exp_dir),
      help="Reports go to <exp-dir>/onnx-<decoding-method> unless --res-dir is given.")
    a("--decoding-method", type=str, default="greedy_search", choices=("greedy_search",),
      help="Search (greedy, as sherpa-onnx's default).")
    a("--test-sets", type=str, default=recipe.test_sets,
      help="Comma-separated NAME=MANIFEST pairs (manifests in --manifest-dir).")
    a("--gigaspeech-scoring", type=str2bool, default=recipe.gigaspeech_scoring,
      help="Normalise references and hypotheses as GigaSpeech scoring does.")
    a("--res-dir", type=Path, default=None, help="Where reports go.")
    AsrDataModule.add_arguments(parser)
    return parser


def model_tag(encoder_filename: Path) -> str:
    """``encoder-epoch-99-avg-1.int8.onnx`` -> ``epoch-99-avg-1.int8``."""
    name = Path(encoder_filename).name
    name = name[: -len(".onnx")] if name.endswith(".onnx") else name
    return name[len("encoder-"):] if name.startswith("encoder-") else name


def decode_dataset(dl, model: OnnxTransducer, tokens: list[str],
                   blank_penalty: float = 0.0) -> tuple[list[Result], float]:
    """(cut_id, ref_words, hyp_words) per utterance, and the audio duration in seconds."""
    results: list[Result] = []
    duration = 0.0
    unk_id = token_id(tokens, "<unk>")
    for batch in dl:
        x = batch["inputs"].numpy().astype(np.float32)  # (N, T, F)
        x_lens = batch["supervisions"]["num_frames"].numpy().astype(np.int64)  # (N,)
        enc, enc_lens = model.run_encoder(x, x_lens)
        hyps = greedy_search(model, enc, enc_lens, blank_penalty=blank_penalty,
                             unk_id=unk_id)
        cuts = batch["supervisions"]["cut"]
        duration += sum(c.duration for c in cuts)
        for cut, ref, hyp in zip(cuts, batch["supervisions"]["text"], hyps):
            results.append((cut.id, ref.split(), tokens_to_text(hyp, tokens).split()))
    return results, duration


def run(args: argparse.Namespace) -> dict[str, list[tuple[str, float]]]:
    """Decodes every test set; returns {test set: [(key, WER)]}."""
    params: dict[str, Any] = dict(vars(args))
    params["return_cuts"] = True
    manifests = {n: Path(params["manifest_dir"]) / m
                 for n, m in parse_test_sets(params["test_sets"])}
    cuts = {n: load_cuts(p) for n, p in manifests.items()}
    for name, c in cuts.items():
        if next(iter(c), None) is None:
            raise ValueError(f"test set '{name}' ({manifests[name]}) has no cuts")
    model, tokens = load_onnx_model(args)
    res_dir = args.res_dir or Path(args.exp_dir) / f"onnx-{args.decoding_method}"
    key = args.decoding_method
    suffix = f"{key}-{model_tag(args.encoder_model_filename)}"
    setup_logger(Path(res_dir) / f"log-decode-{suffix}")
    dm = AsrDataModule(params)
    wers = {}
    for name, c in cuts.items():
        start = time.time()
        results, duration = decode_dataset(dm.test_dataloaders(c), model, tokens,
                                           args.blank_penalty)
        elapsed = time.time() - start
        logging.info(f"{name}: {elapsed:.3f} s for {duration:.3f} s of audio, "
                     f"RTF {elapsed / max(duration, 1e-9):.4f}")
        if args.gigaspeech_scoring:
            results = post_processing(results)
        wers[name] = save_results(res_dir, name, {key: results}, suffix=suffix)
    logging.info("Done!")
    return wers


def main(recipe: DecodeRecipe, argv: list[str] | None = None) -> dict[str, Any]:
    """onnx_decode.py; bad input is one line on stderr and exit status 1."""
    args = get_parser(recipe).parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError) as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(1)
