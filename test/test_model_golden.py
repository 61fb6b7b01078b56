"""The model computes the reference's function (golden vectors, eval mode)."""

from __future__ import annotations

import pytest
import torch

from icefall.zipformer import get_model

GOLDEN = ["golden-tiny.pt", "golden-tiny-adapters.pt", "golden-tiny-causal-adapters.pt"]
TOL = 1e-4


def max_valid_diff(a: torch.Tensor, b: torch.Tensor, lens: torch.Tensor) -> float:
    """Max |a - b| over the valid frames t < lens[n] of each sequence."""
    return max(float((a[n, :ln] - b[n, :ln]).abs().max()) for n, ln in enumerate(lens.tolist()))


@pytest.fixture(scope="module", params=GOLDEN)
def golden(request, reference_dir):
    data = torch.load(reference_dir / request.param, weights_only=True)
    model = get_model(data["config"])
    model.load_state_dict(data["state_dict"], strict=True)
    return model.eval(), data


def test_embed_and_encoder_outputs_match(golden):
    model, g = golden
    with torch.no_grad():
        embed, embed_lens = model.encoder_embed(g["x"], g["x_lens"])
        enc, enc_lens = model.forward_encoder(g["x"], g["x_lens"])
    assert torch.equal(embed_lens, g["embed_out_lens"])
    assert torch.equal(enc_lens, g["encoder_out_lens"])
    assert embed.shape == g["embed_out"].shape and enc.shape == g["encoder_out"].shape
    assert max_valid_diff(embed, g["embed_out"], embed_lens) < TOL
    assert max_valid_diff(enc, g["encoder_out"], enc_lens) < TOL


def test_decoder_joiner_and_simple_projections_match(golden):
    model, g = golden
    with torch.no_grad():
        enc = g["encoder_out"]
        sos_y = torch.nn.functional.pad(g["y"], (1, 0), value=model.decoder.blank_id)
        dec = model.decoder(sos_y, need_pad=True)
        logits = model.joiner(model.joiner.encoder_proj(enc)[:, :, None],
                              model.joiner.decoder_proj(dec)[:, None], project_input=False)
        am, lm = model.simple_am_proj(enc), model.simple_lm_proj(dec)
    lens = g["encoder_out_lens"]
    assert (dec - g["decoder_out"]).abs().max() < TOL
    assert max_valid_diff(logits, g["joiner_logits"], lens) < TOL
    assert max_valid_diff(am, g["simple_am"], lens) < TOL
    assert (lm - g["simple_lm"]).abs().max() < TOL


def test_golden_outputs_are_sensitive_to_the_weights(golden):
    """Guards the comparison itself: a slightly wrong weight is detected."""
    model, g = golden
    key = next(k for k in g["state_dict"] if k.endswith("feed_forward3.out_proj.weight"))
    with torch.no_grad():
        param = dict(model.named_parameters())[key]
        param.add_(1e-2)
        enc, lens = model.forward_encoder(g["x"], g["x_lens"])
        param.sub_(1e-2)
    assert max_valid_diff(enc, g["encoder_out"], lens) > 10 * TOL
