"""Installs the ``icefall`` library of zipformer-adapter (``pip install -e .``)."""

from setuptools import find_packages, setup

setup(
    name="zipformer-adapter",
    version="0.1.0",
    description=(
        "Adapter fine-tuning of icefall Zipformer transducers: train residual "
        "bottleneck adapters on a frozen base, decode with adapters on or off, "
        "export to ONNX."
    ),
    python_requires=">=3.10",
    packages=find_packages(include=["icefall", "icefall.*"]),
    install_requires=[
        # PyTorch 2.3 or newer (device-generic torch.amp.GradScaler); tested with 2.13
        # (CPU) and written for 2.11 + CUDA 13 (make gpu-check). The Makefile installs
        # the local CPU wheel first so that this range is already satisfied.
        "torch>=2.3",
        "lhotse>=1.24",
        "lilcom>=1.7",
        "urllib3>=1.26",
        "sentencepiece>=0.2.0",
        "kaldialign>=0.9",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "kaldi-native-fbank>=1.20",
        "soundfile>=0.12",
        # resampling (lhotse's Recording.resample uses it when torchaudio is absent;
        # icefall.audio for pretrained.py and onnx_pretrained.py)
        "scipy>=1.10",
        "tensorboard>=2.14",
        "numpy>=1.24",
    ],
    extras_require={
        # Optional accelerators: used when importable, never required.
        "k2": ["k2"],
        "kaldifeat": ["kaldifeat"],
        "sherpa": ["sherpa-onnx>=1.10"],
    },
)
