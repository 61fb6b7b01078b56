"""Decoding test cuts with sherpa-onnx, from their audio, as a deployment would.

sherpa-onnx computes its own features from the audio (kaldi-native-fbank) and runs greedy
search on the exported encoder, decoder and joiner. Utterances are decoded in the batches
that decode.py forms with the same ``max_duration`` (the data module's evaluation sampler):
the Zipformer's convolutional front end sees a few padding frames at the end of all but the
longest utterance of a batch, so equal batches are what make the outputs comparable word
for word with decode.py and onnx_decode.py.

Dimension legend: S = samples.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from icefall.data import AsrDataModule, load_cuts
from icefall.data.fbank import NUM_MEL_BINS
from icefall.decode.report import save_results

Result = tuple[str, list[str], list[str]]  # (cut id, reference words, hypothesis words)


def sherpa_recognizer(params: Mapping[str, Any]):
    """A sherpa-onnx OfflineRecognizer of the exported files in ``params`` (encoder,
    decoder, joiner, tokens, num_threads).

    Raises:
      FileNotFoundError: naming the first missing file.
      ImportError: sherpa-onnx is not installed.
    """
    try:
        import sherpa_onnx
    except ImportError as e:
        raise ImportError("sherpa-onnx is not installed: pip install sherpa-onnx") from e
    for key in ("encoder", "decoder", "joiner", "tokens"):
        if not Path(params[key]).is_file():
            raise FileNotFoundError(f"not found: {params[key]}")
    return sherpa_onnx.OfflineRecognizer.from_transducer(
        encoder=str(params["encoder"]), decoder=str(params["decoder"]),
        joiner=str(params["joiner"]), tokens=str(params["tokens"]),
        num_threads=params["num_threads"], sample_rate=16000,
        feature_dim=encoder_feature_dim(params["encoder"]), decoding_method="greedy_search")


def encoder_feature_dim(path: str | Path) -> int:
    """F of an exported encoder's input ``x`` (N, T, F): the mel bins sherpa-onnx must
    compute (80 where the file leaves it open)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    return dims[2].dim_value if len(dims) == 3 and dims[2].dim_value > 0 else NUM_MEL_BINS


def sherpa_decode(params: Mapping[str, Any]) -> list[Result]:
    """(cut id, reference words, hypothesis words) of every cut of ``params["cuts"]``,
    batch by batch (logged as ``batch i/N``)."""
    recognizer = sherpa_recognizer(params)
    sampler = AsrDataModule({"max_duration": params["max_duration"]}).eval_sampler(
        load_cuts(params["cuts"]))
    num_batches = sum(1 for _ in sampler)
    results = []
    for i, batch in enumerate(sampler):
        streams = []
        for cut in batch:
            stream = recognizer.create_stream()
            stream.accept_waveform(cut.sampling_rate, cut.load_audio().mean(axis=0))  # (S,)
            streams.append(stream)
        recognizer.decode_streams(streams)
        for cut, stream in zip(batch, streams):
            ref = " ".join(s.text for s in cut.supervisions).split()
            results.append((cut.id, ref, stream.result.text.split()))
        if i % 20 == 0 or i + 1 == num_batches:
            logging.info(f"batch {i + 1}/{num_batches}, cuts processed until now is "
                         f"{len(results)}")
    return results


def sherpa_decode_test_set(params: Mapping[str, Any]) -> float:
    """Decodes ``params["cuts"]`` and writes decode.py's reports (``recogs-``, ``errs-``,
    ``wer-summary-<set>-greedy_search-sherpa-onnx.txt``) to ``params["res_dir"]``;
    returns the WER (%)."""
    results = sherpa_decode(params)
    wers = save_results(params["res_dir"], params["test_set"], {"greedy_search": results},
                        suffix="greedy_search-sherpa-onnx")
    return wers[0][1]
