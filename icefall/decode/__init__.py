"""Decoding: transducer searches (offline and streaming, PyTorch and ONNX Runtime), test-set
decoding, WER reports, GigaSpeech scoring normalisation.

The package imports nothing itself, so :mod:`icefall.decode.onnx_runtime` stays torch-free.

Dimension legend: N = utterances, T = encoder frames, C = encoder output dim.
"""
