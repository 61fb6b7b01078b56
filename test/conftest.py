"""Shared pytest fixtures: the reference oracle folder and deterministic seeding."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = ROOT.parent / "shared" / "reference"


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


def tiny_params(**overrides) -> dict:
    """The TINY_MODEL configuration with ``overrides`` applied."""
    params = dict(TINY_MODEL)
    params.update(overrides)
    return params
