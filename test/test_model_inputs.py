"""Bad input and bad flags raise a ValueError that says what is wrong."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_params

from icefall.zipformer import get_model


@pytest.fixture(scope="module")
def model():
    return get_model(tiny_params()).eval()


def test_wrong_feature_dimension(model):
    with pytest.raises(ValueError, match=r"\(N, T, 80\)"):
        model.forward_encoder(torch.randn(1, 50, 40), torch.tensor([50]))


def test_input_too_short_for_subsampling(model):
    with pytest.raises(ValueError, match="at least 9"):
        model.forward_encoder(torch.randn(1, 8, 80), torch.tensor([8]))
    with pytest.raises(ValueError, match="at least 9"):
        model.forward_encoder(torch.randn(2, 40, 80), torch.tensor([40, 5]))


def test_lengths_longer_than_input(model):
    with pytest.raises(ValueError, match="longer than"):
        model.forward_encoder(torch.randn(2, 40, 80), torch.tensor([41, 40]))


def test_lengths_of_wrong_shape(model):
    with pytest.raises(ValueError, match="x_lens"):
        model.forward_encoder(torch.randn(2, 40, 80), torch.tensor([40]))


@pytest.mark.parametrize("flag,value", [
    ("encoder_dim", "48,64,80"),
    ("num_heads", "2,2"),
    ("cnn_module_kernel", "15,15,7,7,7,15,15"),
])
def test_inconsistent_per_stack_flag_lengths(flag, value):
    with pytest.raises(ValueError, match=f"--{flag.replace('_', '-')} has"):
        get_model(tiny_params(**{flag: value}))


def test_non_integer_per_stack_flag():
    with pytest.raises(ValueError, match="--encoder-dim"):
        get_model(tiny_params(encoder_dim="48,64,x,96,80,64"))


def test_unmasked_dim_larger_than_encoder_dim():
    with pytest.raises(ValueError, match="--encoder-unmasked-dim"):
        get_model(tiny_params(encoder_unmasked_dim="64,32,48,48,48,32"))


def test_chunk_size_not_multiple_of_downsampling():
    with pytest.raises(ValueError, match="--chunk-size 12"):
        get_model(tiny_params(causal=True, chunk_size="12", left_context_frames="64"))


def test_host_encoder_lengths_equal_the_encoders(model):
    """The boundary of the loss is built from lengths computed on the host: they must be
    the encoder's own output lengths."""
    lens = torch.tensor([9, 10, 23, 24, 57, 100])
    x = torch.randn(len(lens), 100, 80)
    with torch.no_grad():
        _, out_lens = model.forward_encoder(x, lens)
    assert torch.equal(model.encoder_out_lens(lens), out_lens)
