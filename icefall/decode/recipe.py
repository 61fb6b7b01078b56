"""decode.py, decode_gigaspeech.py and onnx_decode.py of both recipes: one driver.

For each test set (``NAME=MANIFEST`` pairs in ``manifest_dir``), the utterances are decoded
batch by batch by a *batch decoder* (the PyTorch model with a search, or the exported model
in ONNX Runtime), and icefall's ``recogs-``, ``errs-`` and ``wer-summary-`` files are
written to the results folder, with the ``For <set>, WER of different settings are:`` log
block. With GigaSpeech scoring, references and hypotheses are first normalised as
GigaSpeech's scoring does (see :mod:`icefall.decode.gigaspeech_scoring`).

Dimension legend: N = utterances of a batch, T = frames.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lhotse import CutSet
from torch import nn

from icefall.data import AsrDataModule, load_bpe_model, load_cuts
from icefall.data.manifests import feature_width, find_manifest
from icefall.data.tokenizer import set_model_dims_from_bpe
from icefall.data.validation import validate_manifest
from icefall.decode.gigaspeech_scoring import post_processing
from icefall.decode.report import save_results
from icefall.decode.search import decode_batch, decoding_key
from icefall.files import remove_stale_temporaries
from icefall.inference import checkpoint_suffix, load_model_with_notes
from icefall.utils import setup_logger
from icefall.zipformer import DEFAULT_ADAPTER_NAME, active_adapter, named_adapters

Result = tuple[str, list[str], list[str]]  # (cut id, reference words, hypothesis words)
BatchDecoder = Callable[[dict], list[str]]  # a lhotse batch -> N hypothesis texts


def parse_test_sets(value: str) -> list[tuple[str, str]]:
    """``"dev=a.jsonl.gz,test=b.jsonl.gz"`` -> ``[("dev", "a..."), ("test", "b...")]``."""
    pairs = []
    for item in value.split(","):
        name, sep, manifest = item.strip().partition("=")
        if not sep or not name or not manifest:
            raise ValueError(f"--test-sets: expected NAME=MANIFEST pairs, got '{item}'")
        pairs.append((name.strip(), manifest.strip()))
    return pairs


def load_test_sets(params: Mapping[str, Any]) -> dict[str, CutSet]:
    """The test sets of ``params["test_sets"]`` (lazy; ``a|b``: the manifest of the two that
    exists), every cut checked first (readable, features or audio present, no audio source
    that runs a command or fetches a URL unless ``trust_manifest``): a bad cut is one line
    naming it, before decoding starts."""
    sets = {}
    for name, manifest in parse_test_sets(params["test_sets"]):
        path = find_manifest(params["manifest_dir"], manifest)
        validate_manifest(path, num_mel_bins=None,  # the model's: check_feature_dim
                          require_supervisions=True,
                          need_features=not params.get("on_the_fly_feats", False),
                          trust_sources=params.get("trust_manifest", False))
        sets[name] = load_cuts(path)
    return sets


def check_feature_dim(cuts: Mapping[str, CutSet], feature_dim: int, what: str,
                      on_the_fly: bool = False) -> None:
    """The stored features of each test set are ``feature_dim`` wide (the input of the
    model ``what``); :func:`load_test_sets` checked that each set's cuts agree. Nothing to
    check ``on_the_fly`` (features computed at ``feature_dim`` from the audio).

    Raises:
      ValueError: naming the test set, both widths and the flag that sets them.
    """
    if on_the_fly:
        return
    for name, cut_set in cuts.items():
        width = feature_width(cut_set)
        if width is not None and width != feature_dim:
            raise ValueError(f"test set {name}: its features have {width} mel "
                             f"bins but {what} takes {feature_dim} (features are computed "
                             f"with --num-mel-bins; a model is trained with --feature-dim)")


LOG_INTERVAL = 20  # batches between progress lines (and the last batch)


def count_batches(dl) -> int | str:
    """Batches of a test DataLoader, counted on a copy of its sampler (cut metadata only,
    no features are read); ``?`` when the sampler cannot be copied."""
    try:
        return sum(1 for _ in copy.deepcopy(dl.sampler))
    except Exception:  # noqa: BLE001 - only the progress line loses its total
        return "?"


def decode_cuts(dl, decoder: BatchDecoder) -> tuple[list[Result], float]:
    """(cut id, reference words, hypothesis words) of every utterance of a test
    DataLoader, and the audio duration in seconds; logs ``batch i/N`` as icefall does."""
    results: list[Result] = []
    duration = 0.0
    num_batches = count_batches(dl)
    for batch_idx, batch in enumerate(dl):
        cuts = batch["supervisions"]["cut"]
        duration += sum(c.duration for c in cuts)
        texts = decoder(batch)
        for cut, ref, hyp in zip(cuts, batch["supervisions"]["text"], texts):
            results.append((cut.id, ref.split(), hyp.split()))
        if batch_idx % LOG_INTERVAL == 0 or batch_idx + 1 == num_batches:
            logging.info(f"batch {batch_idx + 1}/{num_batches}, cuts processed until now is "
                         f"{len(results)}")
    return results, duration


def decode_test_sets(params: Mapping[str, Any], cuts: dict[str, CutSet],
                     decoder: BatchDecoder, res_dir: Path, key: str, suffix: str,
                     gigaspeech_scoring: bool, notes: Sequence[str] = ()
                     ) -> dict[str, list[tuple[str, float]]]:
    """Decodes every test set of ``cuts`` batch by batch (the data module's test
    DataLoaders) and writes its reports (:func:`report_test_sets`).

    Args:
      notes: lines for the log from before it was set up (how the model was loaded).
    """
    dm = AsrDataModule({**params, "return_cuts": True})
    return report_test_sets(cuts, lambda c: decode_cuts(dm.test_dataloaders(c), decoder),
                            res_dir, key, suffix, gigaspeech_scoring, notes)


def report_test_sets(cuts: dict[str, CutSet],
                     decode_set: Callable[[CutSet], tuple[list[Result], float]],
                     res_dir: Path, key: str, suffix: str, gigaspeech_scoring: bool,
                     notes: Sequence[str] = ()) -> dict[str, list[tuple[str, float]]]:
    """Decodes every test set of ``cuts`` with ``decode_set`` (cuts -> results and audio
    seconds) and writes its reports to ``res_dir`` (stale temporaries of a crashed run
    removed first), logging each set's RTF and ``notes`` (lines from before the log was
    set up); returns {test set: [(key, WER)]}."""
    Path(res_dir).mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(res_dir)
    setup_logger(Path(res_dir) / f"log-decode-{suffix}")
    for line in notes:
        logging.info(line)
    wers = {}
    for name, c in cuts.items():
        start = time.time()
        results, duration = decode_set(c)
        elapsed = time.time() - start
        logging.info(f"{name}: {elapsed:.3f} s for {duration:.3f} s of audio, "
                     f"RTF {elapsed / max(duration, 1e-9):.4f}")
        if gigaspeech_scoring:
            results = post_processing(results)
        wers[name] = save_results(res_dir, name, {key: results}, suffix=suffix)
    logging.info("Done!")
    return wers


# ----------------------------------------------------------------------------- PyTorch


def results_suffix(params: Mapping[str, Any]) -> str:
    """icefall's ``params.suffix``: the model tag plus the search settings."""
    suffix = checkpoint_suffix(params)
    if params["decoding_method"] in ("beam_search", "modified_beam_search"):
        suffix += f"-{params['decoding_method']}-beam-size-{params['beam_size']}"
    else:
        suffix += f"-context-{params['context_size']}"
        suffix += f"-max-sym-per-frame-{params['max_sym_per_frame']}"
    return suffix


def adapter_state_tag(model: nn.Module) -> str:
    """What the report names say about adapters: ``-adapters-off`` when ``model`` holds
    adapters and none is in use, ``-adapter-<name>`` when a named adapter other than
    ``default`` is in use, else ``""`` (the default adapter on keeps icefall's names). So
    decoding one checkpoint with adapters on and off, or with several adapters, never
    writes the same report files."""
    name = active_adapter(model)
    if name is None:
        return "-adapters-off" if named_adapters(model) else ""
    return "" if name == DEFAULT_ADAPTER_NAME else f"-adapter-{name}"


def context_graph_of(params: Mapping[str, Any], sp):
    """The ContextGraph of ``--context-file`` (BPE pieces of each line, ``--context-score``
    per piece), or None without one.

    Raises:
      ValueError: a context file with another method than modified_beam_search, or a file
        that cannot be read or holds no phrase.
    """
    from icefall.decode.context_graph import read_context_file

    if not params.get("context_file"):
        return None
    if params["decoding_method"] != "modified_beam_search":
        raise ValueError("--context-file biases --decoding-method modified_beam_search only "
                         f"(got {params['decoding_method']})")
    return read_context_file(params["context_file"], sp.encode, params["context_score"])


def pytorch_decoder(model: nn.Module, sp, params: Mapping[str, Any],
                    context_graph=None) -> BatchDecoder:
    """A batch decoder running ``model``'s encoder and the search of ``params`` (with the
    context biasing of ``context_graph``)."""
    device = next(model.parameters()).device

    def decode(batch: dict) -> list[str]:
        feats = batch["inputs"].to(device, non_blocking=True)  # (N, T, 80)
        lens = batch["supervisions"]["num_frames"]  # (N,), the model reads them on the host
        with torch.no_grad():
            enc, enc_lens = model.forward_encoder(feats, lens)
            hyps = decode_batch(model, enc, enc_lens, params["decoding_method"],
                                beam_size=params["beam_size"],
                                max_sym_per_frame=params["max_sym_per_frame"],
                                blank_penalty=params["blank_penalty"], beam=params["beam"],
                                max_contexts=params["max_contexts"],
                                max_states=params["max_states"],
                                context_graph=context_graph)
        return sp.decode(hyps)

    return decode


def decode_checkpoint(params: Mapping[str, Any], gigaspeech_scoring: bool
                      ) -> dict[str, list[tuple[str, float]]]:
    """decode.py: the checkpoint model chosen by the flags in ``params`` on every test set
    (on the first GPU when there is one); returns {test set: [(key, WER)]}."""
    params = dict(params)
    sp = load_bpe_model(params["bpe_model"])
    set_model_dims_from_bpe(params, sp)
    cuts = load_test_sets(params)  # fails before the model loads
    graph = context_graph_of(params, sp)
    res_dir = params["res_dir"] or Path(params["exp_dir"]) / params["decoding_method"]
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    # model flags not given on the command line come from the checkpoint
    model, notes = load_model_with_notes(params, device)
    check_feature_dim(cuts, model.encoder_embed.in_channels, "the model",
                      bool(params.get("on_the_fly_feats")))
    suffix = results_suffix(params) + adapter_state_tag(model)
    key = decoding_key(params["decoding_method"], params["beam_size"], params["beam"],
                       params["max_contexts"], params["max_states"])
    if graph is not None:  # icefall's tag of a biased search
        key += f"-context-score-{params['context_score']:g}"
        logging.info(f"Context biasing: {graph.num_nodes} graph nodes from "
                     f"{params['context_file']}, {params['context_score']:g} per token")
    return decode_test_sets(params, cuts, pytorch_decoder(model, sp, params, graph), res_dir,
                            key, f"{key}-{suffix}", gigaspeech_scoring, notes)


# ----------------------------------------------------------------------------- CTC

CTC_DECODING_METHODS = ("ctc-greedy-search", "ctc-prefix-beam-search")


def ctc_decoding_key(decoding_method: str) -> str:
    """icefall's result key: ``ctc-greedy-search`` or ``prefix-beam-search``."""
    if decoding_method not in CTC_DECODING_METHODS:
        raise ValueError(f"unknown CTC decoding method '{decoding_method}'; expected one of "
                         f"{', '.join(CTC_DECODING_METHODS)} (the lattice methods of "
                         "icefall's ctc_decode.py need k2 and an HLG graph)")
    return decoding_method.removeprefix("ctc-") if "prefix" in decoding_method \
        else decoding_method


def ctc_decoder(model: nn.Module, sp, params: Mapping[str, Any]) -> BatchDecoder:
    """A batch decoder running ``model``'s encoder and CTC head, then the CTC search."""
    from icefall.decode.ctc import ctc_greedy_search, ctc_prefix_beam_search

    device = next(model.parameters()).device
    blank_id = int(params["blank_id"])

    def decode(batch: dict) -> list[str]:
        feats = batch["inputs"].to(device, non_blocking=True)  # (N, T, 80)
        with torch.no_grad():
            enc, enc_lens = model.forward_encoder(feats, batch["supervisions"]["num_frames"])
            log_probs = model.ctc_output(enc)  # (N, T', V)
            if params["decoding_method"] == "ctc-greedy-search":
                hyps = ctc_greedy_search(log_probs, enc_lens, blank_id)
            else:
                hyps = ctc_prefix_beam_search(log_probs, enc_lens, params["beam"], blank_id)
        return sp.decode(hyps)

    return decode


def decode_ctc_checkpoint(params: Mapping[str, Any]) -> dict[str, list[tuple[str, float]]]:
    """ctc_decode.py: the CTC head of the checkpoint model chosen by the flags, on every test
    set; reports in ``<exp-dir>/<decoding-method>/`` as decode.py writes them."""
    params = dict(params)
    key = ctc_decoding_key(params["decoding_method"])
    if not params.get("use_ctc"):
        raise ValueError("ctc_decode.py decodes a model's CTC head: pass --use-ctc 1 (and "
                         "the checkpoint must have one)")
    sp = load_bpe_model(params["bpe_model"])
    set_model_dims_from_bpe(params, sp)
    cuts = load_test_sets(params)  # fails before the model loads
    res_dir = params["res_dir"] or Path(params["exp_dir"]) / params["decoding_method"]
    suffix = checkpoint_suffix(params)
    if key == "prefix-beam-search":
        suffix += f"-beam-{params['beam']}"
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    model, notes = load_model_with_notes(params, device)
    check_feature_dim(cuts, model.encoder_embed.in_channels, "the model",
                      bool(params.get("on_the_fly_feats")))
    suffix += adapter_state_tag(model)
    return decode_test_sets(params, cuts, ctc_decoder(model, sp, params), res_dir, key,
                            f"{key}-{suffix}", False, notes)


# ----------------------------------------------------------------------------- ONNX Runtime


def model_tag(encoder_filename: str | Path) -> str:
    """``encoder-epoch-99-avg-1.int8.onnx`` -> ``epoch-99-avg-1.int8``."""
    name = Path(encoder_filename).name
    name = name[: -len(".onnx")] if name.endswith(".onnx") else name
    return name[len("encoder-"):] if name.startswith("encoder-") else name


def onnx_decoder(model, tokens: list[str], blank_penalty: float = 0.0) -> BatchDecoder:
    """A batch decoder running the exported model in ONNX Runtime with sherpa-onnx's
    greedy search (:mod:`icefall.decode.onnx_runtime`)."""
    from icefall.decode import onnx_runtime as rt

    unk_id = rt.token_id(tokens, "<unk>")

    def decode(batch: dict) -> list[str]:
        x = batch["inputs"].numpy().astype(np.float32)  # (N, T, F)
        x_lens = batch["supervisions"]["num_frames"].numpy().astype(np.int64)  # (N,)
        enc, enc_lens = model.run_encoder(x, x_lens)
        hyps = rt.greedy_search(model, enc, enc_lens, blank_penalty=blank_penalty,
                                unk_id=unk_id)
        return [rt.tokens_to_text(h, tokens) for h in hyps]

    return decode


def decode_onnx(params: Mapping[str, Any]) -> dict[str, list[tuple[str, float]]]:
    """onnx_decode.py: the exported files of ``params`` on every test set; reports go to
    ``<exp-dir>/onnx-greedy_search/`` unless ``res_dir`` is given."""
    from icefall.decode.onnx_runtime import load_onnx_model

    cuts = load_test_sets(params)  # fails before the model loads
    model, tokens = load_onnx_model(
        params["encoder_model_filename"], params["decoder_model_filename"],
        params["joiner_model_filename"], params["tokens"], params["num_threads"])
    check_feature_dim(cuts, model.feature_dim, params["encoder_model_filename"],
                      bool(params.get("on_the_fly_feats")))
    params = {**params, "feature_dim": model.feature_dim}  # on-the-fly features' width
    key = params["decoding_method"]
    res_dir = params["res_dir"] or Path(params["exp_dir"]) / f"onnx-{key}"
    suffix = f"{key}-{model_tag(params['encoder_model_filename'])}"
    return decode_test_sets(params, cuts, onnx_decoder(model, tokens, params["blank_penalty"]),
                            res_dir, key, suffix, params["gigaspeech_scoring"])
