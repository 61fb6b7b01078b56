#!/usr/bin/env python3
"""WER of an exported transducer decoded by sherpa-onnx, from the test cuts' audio.

Usage (from egs/synth/ASR):

    python local/sherpa_onnx_decode.py --encoder exp/adapter/encoder-epoch-3-avg-1.onnx \
        --decoder exp/adapter/decoder-epoch-3-avg-1.onnx \
        --joiner exp/adapter/joiner-epoch-3-avg-1.onnx --tokens data/lang_bpe_200/tokens.txt \
        --cuts data/fbank/synth_b_cuts_test.jsonl.gz --test-set B \
        --max-duration 100 --res-dir exp/decode/sherpa_onnx

sherpa-onnx computes its own features from the audio (kaldi-native-fbank) and runs
greedy search, as a deployment would; the reports are decode.py's (recogs-, errs-,
wer-summary-<set>-greedy_search-sherpa-onnx.txt). Utterances are decoded in the batches
that decode.py forms with the same ``--max-duration`` (the data module's evaluation
sampler): the Zipformer's convolutional front end sees a few padding frames at the end of
all but the longest utterance of a batch, so equal batches are what make the outputs
comparable word for word.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lhotse import load_manifest_lazy

from icefall.cli import run_guarded
from icefall.cli.flags import ArgumentParser, positive_float, positive_int
from icefall.data import AsrDataModule
from icefall.decode.report import save_results


def get_args() -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", type=Path, required=True)
    p.add_argument("--decoder", type=Path, required=True)
    p.add_argument("--joiner", type=Path, required=True)
    p.add_argument("--tokens", type=Path, required=True)
    p.add_argument("--cuts", type=Path, required=True, help="Test cuts with recordings.")
    p.add_argument("--test-set", default="test", help="Name used in the report files.")
    p.add_argument("--res-dir", type=Path, required=True)
    p.add_argument("--num-threads", type=positive_int, default=2)
    p.add_argument("--max-duration", type=positive_float, default=600.0,
                   help="seconds of audio per batch, as decode.py's --max-duration")
    return p.parse_args()


def decode(args: argparse.Namespace) -> list[tuple[str, list[str], list[str]]]:
    import sherpa_onnx

    for f in (args.encoder, args.decoder, args.joiner, args.tokens, args.cuts):
        if not f.is_file():
            raise FileNotFoundError(f"not found: {f}")
    recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
        encoder=str(args.encoder), decoder=str(args.decoder), joiner=str(args.joiner),
        tokens=str(args.tokens), num_threads=args.num_threads, sample_rate=16000,
        feature_dim=80, decoding_method="greedy_search")
    sampler = AsrDataModule({"max_duration": args.max_duration}).eval_sampler(
        load_manifest_lazy(args.cuts))
    results = []
    for batch in sampler:
        streams = []
        for cut in batch:
            stream = recognizer.create_stream()
            stream.accept_waveform(cut.sampling_rate, cut.load_audio()[0])
            streams.append(stream)
        recognizer.decode_streams(streams)
        for cut, stream in zip(batch, streams):
            ref = " ".join(s.text for s in cut.supervisions).split()
            results.append((cut.id, ref, stream.result.text.split()))
    return results


def main() -> None:
    args = get_args()
    results = run_guarded(decode, args)
    save_results(args.res_dir, args.test_set, {"greedy_search": results},
                 suffix="greedy_search-sherpa-onnx")


if __name__ == "__main__":
    main()
