#!/usr/bin/env python3
"""WER of an exported transducer decoded by sherpa-onnx, from the test cuts' audio.

Usage (from egs/synth/ASR):

    python local/sherpa_onnx_decode.py --encoder exp/adapter/encoder-epoch-3-avg-1.onnx \
        --decoder exp/adapter/decoder-epoch-3-avg-1.onnx \
        --joiner exp/adapter/joiner-epoch-3-avg-1.onnx --tokens data/lang_bpe_200/tokens.txt \
        --cuts data/fbank/synth_b_cuts_test.jsonl.gz --test-set B \
        --max-duration 100 --res-dir exp/decode/sherpa_onnx

sherpa-onnx computes its own features from the audio and runs greedy search, as a
deployment would; the reports are decode.py's (recogs-, errs-,
wer-summary-<set>-greedy_search-sherpa-onnx.txt), in the batches decode.py forms with the
same --max-duration. The implementation is icefall/decode/sherpa.py.
"""

from icefall.cli.sherpa import main

if __name__ == "__main__":
    main(__doc__.splitlines()[0])
