"""Shared pytest fixtures: the reference oracle folder and deterministic seeding."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from filelock import FileLock

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


# ------------------------------------------------------------------ runs built once per test run
# Under pytest-xdist every worker has its own session, so a session fixture would train its
# model once per worker. The corpora and training runs below are built once per test run
# instead: the first worker to need one builds it in the run's common temporary folder while
# a file lock holds the others back, and each worker then works on a copy of its own (tests
# write decoding results and checkpoints into the exp dirs). Built from the same seeds with
# one thread, the result does not depend on the worker that built it.


def _run_root(tmp_path_factory) -> Path:
    """The temporary folder common to every worker of this test run."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _built_once(tmp_path_factory, name: str, build: Callable[[Path], None] | None) -> Path:
    """The shared folder ``name``, made by ``build(folder)`` unless a worker already made it
    (``build`` None: it must exist already, a dependency built by another fixture)."""
    root = _run_root(tmp_path_factory)
    folder, done = root / f"once-{name}", root / f"once-{name}.done"
    with FileLock(str(root / f"once-{name}.lock")):
        if not done.exists():
            if build is None:
                raise RuntimeError(f"{folder} was never built")
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def _worker_copy(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A copy, private to this worker, of the shared folder ``name`` (built if need be)."""
    local = tmp_path_factory.mktemp(name)
    shutil.copytree(_built_once(tmp_path_factory, name, build), local, dirs_exist_ok=True)
    return local


def _shared_corpus(tmp_path_factory, name: str, **kwargs) -> dict[str, Path]:
    """make_corpus(**kwargs) built once per run, as {"manifest_dir", "bpe_model"}; the tests
    only read it."""
    def build(folder: Path) -> None:
        from corpus import make_corpus

        paths = make_corpus(folder, **kwargs)
        (folder / "corpus.json").write_text(json.dumps({k: str(v) for k, v in paths.items()}))

    folder = _built_once(tmp_path_factory, name, build)
    return {k: Path(v) for k, v in json.loads((folder / "corpus.json").read_text()).items()}


def _train(spec: str, corpus: dict[str, Path], domain: str, epochs: int,
           *extra: str) -> Callable[[Path], None]:
    """A builder: train ``spec`` (runs.BASE, ADAPTER, LORA) into the folder it is given."""
    def build(exp: Path) -> None:
        import runs

        from icefall.cli.train import main

        main(getattr(runs, spec).train, runs.train_args(corpus, exp, domain, epochs, *extra))
    return build


def _shared_ckpt(tmp_path_factory, run: str, name: str) -> str:
    """The path of checkpoint ``name`` of the shared run ``run`` (stored in the runs built on
    it, so that every worker's copy points at the same base)."""
    return str(_built_once(tmp_path_factory, run, None) / name)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The generated two-domain corpus and its BPE model (test/corpus.py)."""
    return _shared_corpus(tmp_path_factory, "corpus", num_train=200, num_valid=16)


@pytest.fixture(scope="session")
def base_run(corpus, tmp_path_factory):
    """exp dir of an 8-epoch base model trained on domain A by zipformer/train.py."""
    return _worker_copy(tmp_path_factory, "base",
                        _train("BASE", corpus, "a", 8))


@pytest.fixture(scope="session")
def adapter_run(corpus, base_run, tmp_path_factory):
    """exp dir of adapters (dim 8) fine-tuned on domain B from base_run's epoch-8.pt (its
    checkpoints hold the adapters only, the default)."""
    base = _shared_ckpt(tmp_path_factory, "base", "epoch-8.pt")
    return _worker_copy(tmp_path_factory, "adapt", _train(
        "ADAPTER", corpus, "b", 2, "--do-finetune", "1",
        "--finetune-ckpt", base, "--use-adapters", "1", "--adapter-dim", "8"))


@pytest.fixture(scope="session")
def streaming_corpus(tmp_path_factory):
    """The corpus with every utterance ending in 16-32 frames of log(1e-10), which is what
    streaming pads utterances with: a model that streams must have heard it as silence."""
    return _shared_corpus(tmp_path_factory, "streaming_corpus", num_train=160,
                          num_valid=16, quiet_tail=(16, 32))


@pytest.fixture(scope="session")
def causal_run(streaming_corpus, tmp_path_factory):
    """exp dir of a causal base model (runs.CAUSAL_FLAGS) trained 6 epochs on domain A."""
    from runs import CAUSAL_FLAGS

    return _worker_copy(tmp_path_factory, "causal", _train(
        "BASE", streaming_corpus, "a", 6, *CAUSAL_FLAGS))


@pytest.fixture(scope="session")
def causal_adapter_run(streaming_corpus, causal_run, tmp_path_factory):
    """exp dir of adapters (dim 8) fine-tuned on domain B from causal_run's epoch-6.pt,
    drawing chunk sizes as the base training did."""
    from runs import CAUSAL_FLAGS

    base = _shared_ckpt(tmp_path_factory, "causal", "epoch-6.pt")
    return _worker_copy(tmp_path_factory, "causal_adapt", _train(
        "ADAPTER", streaming_corpus, "b", 2, "--do-finetune", "1",
        "--finetune-ckpt", base, "--use-adapters", "1", "--adapter-dim", "8", *CAUSAL_FLAGS))


@pytest.fixture(scope="session")
def lora_run(corpus, base_run, tmp_path_factory):
    """exp dir of LoRA (rank 4, icefall's layers and the joiner's) fine-tuned on domain B from
    base_run's epoch-8.pt by zipformer_lora/finetune.py."""
    base = _shared_ckpt(tmp_path_factory, "base", "epoch-8.pt")
    return _worker_copy(tmp_path_factory, "lora", _train(
        "LORA", corpus, "b", 2, "--do-finetune", "1",
        "--finetune-ckpt", base, "--lora-r", "4", "--adapter-targets", "encoder,joiner"))
