"""Deployment: ONNX export of the transducer (:mod:`icefall.export.onnx`): encoder, decoder
and joiner in the layout sherpa-onnx reads for an offline zipformer2 transducer, plus int8
(dynamic quantisation) versions; adapter files (:mod:`icefall.export.adapter`). Running the
exported files is decoding: :mod:`icefall.decode.onnx_runtime`.
"""
