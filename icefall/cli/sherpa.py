"""sherpa_onnx_decode.py of the demo and custom recipes: flags and ``main`` (the decoding
is :mod:`icefall.decode.sherpa`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from icefall.cli import run_guarded
from icefall.cli.decode import print_wers
from icefall.cli.flags import ArgumentParser, positive_float, positive_int
from icefall.utils import setup_logger


def get_parser(description: str) -> argparse.ArgumentParser:
    p = ArgumentParser(description=description)
    a = p.add_argument
    a("--encoder", type=Path, required=True, help="encoder-*.onnx of export-onnx.py.")
    a("--decoder", type=Path, required=True, help="decoder-*.onnx.")
    a("--joiner", type=Path, required=True, help="joiner-*.onnx.")
    a("--tokens", type=Path, required=True, help="tokens.txt.")
    a("--cuts", type=Path, required=True, help="Test cuts with recordings.")
    a("--test-set", default="test", help="Name used in the report files.")
    a("--res-dir", type=Path, required=True, help="Where the reports go.")
    a("--num-threads", type=positive_int, default=2, help="sherpa-onnx threads.")
    a("--max-duration", type=positive_float, default=600.0,
      help="Seconds of audio per batch, as decode.py's --max-duration.")
    return p


def main(description: str, argv: list[str] | None = None) -> float:
    """sherpa_onnx_decode.py; prints and returns the WER (%)."""
    from icefall.decode.sherpa import sherpa_decode_test_set

    args = get_parser(description).parse_args(argv)
    setup_logger()
    wer = run_guarded(sherpa_decode_test_set, vars(args))
    print_wers({args.test_set: [("greedy_search-sherpa-onnx", wer)]})
    return wer
