"""streaming_decode.py of both recipes: a causal checkpoint decoded chunk by chunk on test
sets, as icefall's ``zipformer/streaming_decode.py`` does, with the reports of decode.py.

Each cut is one stream (:mod:`icefall.decode.streaming`): its stored features, or features
computed from its audio with ``--on-the-fly-feats 1``, padded at the end with 13 + 30
frames of log(1e-10) as icefall pads them; up to ``--num-decode-streams`` streams run
together and a new one joins when one finishes. The model streams with one
``--chunk-size`` and one ``--left-context-frames`` (frames after the frontend, 50 Hz), the
values it was trained with or any others. Reports go to
``<exp-dir>/streaming/<decoding-method>/``, named with the checkpoint, the search and
``chunk-C-left-context-L``.

Dimension legend: T = feature frames of a cut, F = feature dim.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from lhotse import CutSet
from lhotse.features import FeatureExtractor

from icefall.data import load_bpe_model, make_fbank_extractor
from icefall.data.tokenizer import set_model_dims_from_bpe
from icefall.decode.recipe import (
    Result,
    adapter_state_tag,
    check_feature_dim,
    load_test_sets,
    report_test_sets,
    results_suffix,
)
from icefall.decode.search import decoding_key
from icefall.decode.streaming import StreamingSearch, streaming_config, streaming_decode
from icefall.inference import load_model

# LOG_EPS frames icefall's streaming_decode.py adds after the 13 the frontend reads.
TAIL_PAD_LEN = 30


def streaming_suffix(params: Mapping[str, Any]) -> str:
    """decode.py's suffix (checkpoint and search settings; greedy search emits at most one
    symbol per frame) plus ``-chunk-C-left-context-L``."""
    chunk, left = streaming_config(params)
    settings = {**params, "max_sym_per_frame": 1, "beam_size": params["num_active_paths"]}
    return f"{results_suffix(settings)}-chunk-{chunk}-left-context-{left}"


def cut_features(cut, extractor: FeatureExtractor | None) -> torch.Tensor:
    """(T, F) features of a cut: the stored ones, or computed from its audio."""
    feats = cut.load_features() if extractor is None else cut.compute_features(extractor)
    return torch.from_numpy(feats)


def cut_text(cut) -> str:
    """The reference transcript of a cut (its supervisions' texts joined)."""
    return " ".join(s.text for s in cut.supervisions if s.text)


def decode_stream_set(model, sp, cuts: CutSet, search: StreamingSearch,
                      params: Mapping[str, Any]) -> tuple[list[Result], float]:
    """(cut id, reference words, hypothesis words) of every cut, decoded as streams, and
    the audio duration in seconds."""
    extractor = (make_fbank_extractor(model.encoder_embed.in_channels)
                 if params.get("on_the_fly_feats") else None)
    refs: dict[str, str] = {}
    duration = 0.0

    def utterances() -> Iterator[tuple[str, torch.Tensor]]:
        nonlocal duration
        for cut in cuts:
            refs[cut.id] = cut_text(cut)
            duration += cut.duration
            yield cut.id, cut_features(cut, extractor)

    results: list[Result] = []
    for cut_id, tokens in streaming_decode(model, utterances(), search,
                                           chunk_size=streaming_config(params)[0],
                                           num_decode_streams=params["num_decode_streams"],
                                           tail_pad_len=TAIL_PAD_LEN):
        results.append((cut_id, refs.pop(cut_id).split(), sp.decode(tokens).split()))
    return results, duration


def decode_streaming_checkpoint(params: Mapping[str, Any]
                                ) -> dict[str, list[tuple[str, float]]]:
    """streaming_decode.py: the checkpoint model chosen by the flags in ``params``,
    streamed on every test set (on the first GPU when there is one); returns
    {test set: [(key, WER)]}."""
    params = dict(params)
    streaming_config(params)  # fails before anything loads
    sp = load_bpe_model(params["bpe_model"])
    set_model_dims_from_bpe(params, sp)
    cuts = load_test_sets(params)
    method = params["decoding_method"]
    res_dir = params["res_dir"] or Path(params["exp_dir"]) / "streaming" / method
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    model = load_model(params, device)
    check_feature_dim(cuts, model.encoder_embed.in_channels, "the model",
                      bool(params.get("on_the_fly_feats")))
    suffix = streaming_suffix(params) + adapter_state_tag(model)
    if params.get("label"):
        suffix += f"-{params['label']}"
    key = decoding_key(method, params["num_active_paths"])
    search = StreamingSearch(model, method, params["num_active_paths"],
                             params["blank_penalty"])
    return report_test_sets(
        cuts, lambda c: decode_stream_set(model, sp, c, search, params), res_dir, key,
        f"{key}-{suffix}", params["gigaspeech_scoring"])
