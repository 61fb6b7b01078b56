"""Deployment: ONNX export of the transducer and inference with ONNX Runtime.

- :mod:`icefall.export.onnx` exports encoder, decoder and joiner in the layout sherpa-onnx
  reads for an offline zipformer2 transducer, plus int8 (dynamic quantisation) versions;
  ``export-onnx.py`` of both recipes runs its ``main``.
- :mod:`icefall.export.onnx_runtime` runs the exported files with ONNX Runtime and numpy
  only (kaldi-native-fbank features, greedy search); it never imports torch, so a
  deployment needs neither PyTorch nor this package's model code. ``onnx_pretrained.py``
  runs its ``main``.
- :mod:`icefall.export.decode` is ``onnx_decode.py``: WER of the exported model on lhotse
  test sets, written as ``decode.py`` writes it.

This package imports nothing heavy itself, so importing ``onnx_runtime`` stays torch-free.
"""
