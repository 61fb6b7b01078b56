"""Shared pytest fixtures: the reference oracle folder and deterministic seeding."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = ROOT.parent / "shared" / "reference"


# Fixtures that generate a corpus, train a model or run a recipe end to end: a test that
# uses one (directly or through another fixture) is marked ``slow`` (`make test-fast` skips
# it; `make test` runs everything).
HEAVY_FIXTURES = {"corpus", "streaming_corpus", "base_run", "adapter_run", "causal_run",
                  "causal_adapter_run", "lora_run", "demo", "custom_run", "prepared"}


# The longest single files run first, so that under `make test`'s two workers each starts
# on one of them while the other files fill the rest of the time.
FIRST_FILES = ("test_demo.py", "test_gpu_check.py")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if HEAVY_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    order = {name: i for i, name in enumerate(FIRST_FILES)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))  # stable


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference`` beside the checkout; tests that need it skip without it."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE_DIR}")
    return REFERENCE_DIR


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    torch.manual_seed(0)
    yield


# A small model with every kind of stack (6 stacks, downsampling 1..8), for fast tests.
TINY_MODEL = {
    "num_encoder_layers": "1,1,1,2,1,1",
    "downsampling_factor": "1,2,4,8,4,2",
    "feedforward_dim": "96,128,160,192,160,128",
    "num_heads": "2,2,2,4,2,2",
    "encoder_dim": "48,64,80,96,80,64",
    "query_head_dim": "16",
    "value_head_dim": "8",
    "pos_head_dim": "4",
    "pos_dim": 16,
    "encoder_unmasked_dim": "32,32,48,48,48,32",
    "cnn_module_kernel": "15,15,7,7,7,15",
    "decoder_dim": 64,
    "joiner_dim": 64,
    "vocab_size": 50,
    "context_size": 2,
    "adapter_dim": 8,
}


# Two stacks: the model the training, decoding and export tests train (fast to train).
TRAIN_MODEL = {
    "num_encoder_layers": "1,1",
    "downsampling_factor": "1,2",
    "feedforward_dim": "128,128",
    "num_heads": "2,2",
    "encoder_dim": "64,64",
    "query_head_dim": "16",
    "value_head_dim": "8",
    "pos_head_dim": "4",
    "pos_dim": 16,
    "encoder_unmasked_dim": "48,48",
    "cnn_module_kernel": "15,15",
    "decoder_dim": 64,
    "joiner_dim": 64,
    "context_size": 2,
}


def tiny_params(**overrides) -> dict:
    """The TINY_MODEL configuration with ``overrides`` applied."""
    params = dict(TINY_MODEL)
    params.update(overrides)
    return params


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The generated two-domain corpus and its BPE model (test/corpus.py)."""
    from corpus import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus"), num_train=200, num_valid=16)


@pytest.fixture(scope="session")
def base_run(corpus, tmp_path_factory):
    """exp dir of a 2-epoch base model trained on domain A by zipformer/train.py."""
    from runs import BASE, train_args

    from icefall.cli.train import main

    exp = tmp_path_factory.mktemp("base")
    main(BASE.train, train_args(corpus, exp, "a", 8))
    return exp


@pytest.fixture(scope="session")
def adapter_run(corpus, base_run, tmp_path_factory):
    """exp dir of adapters (dim 8) fine-tuned on domain B from base_run's epoch-8.pt (its
    checkpoints hold the adapters only, the default)."""
    from runs import ADAPTER, train_args

    from icefall.cli.train import main

    exp = tmp_path_factory.mktemp("adapt")
    main(ADAPTER.train, train_args(corpus, exp, "b", 2, "--do-finetune", "1",
                                    "--finetune-ckpt", str(base_run / "epoch-8.pt"),
                                    "--use-adapters", "1", "--adapter-dim", "8"))
    return exp


@pytest.fixture(scope="session")
def streaming_corpus(tmp_path_factory):
    """The corpus with every utterance ending in 16-32 frames of log(1e-10), which is what
    streaming pads utterances with: a model that streams must have heard it as silence."""
    from corpus import make_corpus

    return make_corpus(tmp_path_factory.mktemp("streaming_corpus"), num_train=160,
                       num_valid=16, quiet_tail=(16, 32))


@pytest.fixture(scope="session")
def causal_run(streaming_corpus, tmp_path_factory):
    """exp dir of a causal base model (runs.CAUSAL_FLAGS) trained 6 epochs on domain A."""
    from runs import BASE, CAUSAL_FLAGS, train_args

    from icefall.cli.train import main

    exp = tmp_path_factory.mktemp("causal")
    main(BASE.train, train_args(streaming_corpus, exp, "a", 6, *CAUSAL_FLAGS))
    return exp


@pytest.fixture(scope="session")
def causal_adapter_run(streaming_corpus, causal_run, tmp_path_factory):
    """exp dir of adapters (dim 8) fine-tuned on domain B from causal_run's epoch-6.pt,
    drawing chunk sizes as the base training did."""
    from runs import ADAPTER, CAUSAL_FLAGS, train_args

    from icefall.cli.train import main

    exp = tmp_path_factory.mktemp("causal_adapt")
    main(ADAPTER.train, train_args(streaming_corpus, exp, "b", 2, "--do-finetune", "1",
                                    "--finetune-ckpt", str(causal_run / "epoch-6.pt"),
                                    "--use-adapters", "1", "--adapter-dim", "8",
                                    *CAUSAL_FLAGS))
    return exp


@pytest.fixture(scope="session")
def lora_run(corpus, base_run, tmp_path_factory):
    """exp dir of LoRA (rank 4, icefall's layers and the joiner's) fine-tuned on domain B from
    base_run's epoch-8.pt by zipformer_lora/finetune.py."""
    from runs import LORA, train_args

    from icefall.cli.train import main

    exp = tmp_path_factory.mktemp("lora")
    main(LORA.train, train_args(corpus, exp, "b", 2, "--do-finetune", "1",
                                 "--finetune-ckpt", str(base_run / "epoch-8.pt"),
                                 "--lora-r", "4", "--adapter-targets", "encoder,joiner"))
    return exp
