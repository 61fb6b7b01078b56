"""--adapter-targets: presets and fnmatch patterns, for output kinds (residual) and wrapper
kinds (LoRA), in the encoder, the decoder and the joiner; the searches with adapters in the
decoder and joiner against the modules themselves; uninstalling gives the base back."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_params

from icefall.decode.search import greedy_search_batch
from icefall.decode.step import TransducerStep
from icefall.zipformer import (
    LoRAEmbedding,
    LoRALinear,
    ResidualAdapter,
    adapter_parameter_names,
    add_adapters,
    freeze_all_but_adapters,
    get_model,
    iter_adapters,
    lora_unmerged,
    output_adapter_of,
    set_adapter_training,
    uninstall_adapters,
)
from icefall.zipformer.layer import ADAPTER_SLOTS, Zipformer2EncoderLayer
from icefall.zipformer.scaling import ActivationDropoutAndLinear

KINDS = ("residual", "lora")
PRESETS = ("encoder", "decoder", "joiner", "all_linear")


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 61, 80, generator=g), torch.tensor([61, 48])


def _adapted(kind: str, targets: str, dim: int = 4, **extra) -> torch.nn.Module:
    return get_model(tiny_params(use_adapters=True, adapter_kind=kind, adapter_dim=dim,
                                 adapter_targets=targets, **extra))


def _randomise(model, seed: int = 3, scale: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad(), lora_unmerged(model):
        for _, adapter in iter_adapters(model):
            for _, p in adapter.adapter_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _linear_names(model) -> set[str]:
    return {n for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, ActivationDropoutAndLinear))}


def test_encoder_preset_is_the_four_slots_of_every_layer():
    model = get_model(tiny_params(use_adapters=True))  # default targets: encoder
    reference = get_model(tiny_params())
    assert add_adapters(reference, 8) == 4 * 7  # the zipformer_adapter recipe's slots
    assert list(model.state_dict()) == list(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert model.state_dict()[key].shape == value.shape, key
    for layer in (m for m in model.modules() if isinstance(m, Zipformer2EncoderLayer)):
        assert all(isinstance(getattr(layer, s), ResidualAdapter) for s in ADAPTER_SLOTS)


def test_residual_presets_put_bottlenecks_on_outputs():
    dims = tiny_params()
    decoder = _adapted("residual", "decoder")
    assert set(adapter_parameter_names(decoder)) == {
        f"decoder.output_adapter.{p}.{w}" for p in ("in_proj", "out_proj")
        for w in ("weight", "bias")}
    assert output_adapter_of(decoder.decoder).in_proj.weight.shape == (4, dims["decoder_dim"])
    joiner = _adapted("residual", "joiner")
    names = {n.split(".output_adapter.")[0] for n in adapter_parameter_names(joiner)}
    assert names == {"joiner.encoder_proj", "joiner.decoder_proj"}
    every = _adapted("residual", "all_linear")
    names = {n.split(".output_adapter.")[0] for n in adapter_parameter_names(every)}
    base_linears = _linear_names(get_model(tiny_params()))
    assert names == base_linears - {"simple_am_proj", "simple_lm_proj"}


def test_lora_presets_wrap_icefalls_layers_the_embedding_and_the_joiner():
    dims = tiny_params()
    encoder = _adapted("lora", "encoder")
    assert sum(isinstance(m, LoRALinear) for m in encoder.modules()) == 7 * 9
    decoder = _adapted("lora", "decoder")
    assert isinstance(decoder.decoder.embedding, LoRAEmbedding)
    sd = decoder.state_dict()
    assert sd["decoder.embedding.lora_A"].shape == (4, dims["vocab_size"])
    assert sd["decoder.embedding.lora_B"].shape == (dims["decoder_dim"], 4)
    joiner = _adapted("lora", "joiner")
    assert {n.rsplit(".", 1)[0] for n in adapter_parameter_names(joiner)} == {
        "joiner.encoder_proj", "joiner.decoder_proj", "joiner.output_linear"}
    every = _adapted("lora", "all_linear")
    wrapped = {n.rsplit(".", 1)[0].removesuffix(".l") for n in adapter_parameter_names(every)}
    assert wrapped == _linear_names(get_model(tiny_params())) - {"simple_am_proj",
                                                                "simple_lm_proj"}


def test_patterns_match_module_names_with_fnmatch():
    model = _adapted("lora", "encoder.encoders.3.*.feed_forward?.out_proj,joiner.output_linear")
    names = {n.rsplit(".", 2)[0] for n in adapter_parameter_names(model)
             if n.endswith("lora_A")}
    assert names == {f"encoder.encoders.3.encoder.layers.{i}.feed_forward{j}.out_proj"
                     for i in range(2) for j in (1, 2, 3)} | {"joiner"}
    slots = _adapted("residual", "encoder.encoders.0.*mid_adapter")
    assert [n for n, _ in iter_adapters(slots)] == ["encoder.encoders.0.layers.0.mid_adapter"]
    with pytest.raises(ValueError, match="'joiner.nothing' names no linear layer"):
        _adapted("lora", "encoder,joiner.nothing")
    with pytest.raises(ValueError, match="unknown adapter kind 'nope'"):
        _adapted("nope", "encoder")


@pytest.mark.parametrize("kind", KINDS)
def test_fresh_adapters_anywhere_change_nothing(kind):
    base = get_model(tiny_params()).eval()
    base.requires_grad_(False)  # LoRA freezes what it wraps; compare like with like
    x, x_lens = _inputs()
    with torch.no_grad():
        enc, lens = base.forward_encoder(x, x_lens)
        dec = base.decoder(torch.tensor([[3, 5], [-1, 0]]), need_pad=False)
        logits = base.joiner(enc[:, :4, None], dec[:, None])
    for preset in PRESETS:
        model = _adapted(kind, preset)
        model.load_state_dict(base.state_dict(), strict=False)
        model.requires_grad_(False)
        model.eval()
        with torch.no_grad():
            e, _ = model.forward_encoder(x, x_lens)
            d = model.decoder(torch.tensor([[3, 5], [-1, 0]]), need_pad=False)
            assert torch.equal(e, enc) and torch.equal(d, dec), preset
            assert torch.equal(model.joiner(e[:, :4, None], d[:, None]), logits), preset


def _naive_logits(model, enc: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
    """The joiner's logits for every (frame, context) pair, calling the modules."""
    dec = model.decoder(contexts, need_pad=False)  # (M, 1, D)
    return model.joiner(enc[:, None, :], dec[None, :, 0, :])  # (T, M, V)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("preset", ["decoder", "joiner", "all_linear"])
def test_search_step_applies_decoder_and_joiner_adapters(kind, preset):
    """The searches' step (projections applied apart, joiner with project_input=False)
    computes the logits of the modules' joint call with adapters in the decoder and joiner."""
    model = _adapted(kind, preset)
    _randomise(model)
    model.eval()
    x, x_lens = _inputs()
    contexts = torch.tensor([[-1, 0], [3, 5], [7, 7], [0, 11]])
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        expected = _naive_logits(model, enc[0, :6], contexts)
        plain = _naive_logits(get_model(tiny_params()).eval(), enc[0, :6], contexts)
    with torch.inference_mode():
        step = TransducerStep(model)
        got = step.logits(step.project_encoder(enc[0, :6])[:, None, :],
                          step.decoder_out(contexts)[None])
        greedy_search_batch(model, enc, enc_lens)  # runs with the adapters in
    assert (got - expected).abs().max() < 1e-4
    assert (expected - plain).abs().max() > 1e-2  # the adapters act


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("preset", PRESETS)
def test_uninstalling_gives_back_the_base_model_exactly(kind, preset):
    base = get_model(tiny_params())
    model = _adapted(kind, preset)
    model.load_state_dict(base.state_dict(), strict=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _randomise(model)
    model.eval()  # LoRA merged
    x, x_lens = _inputs()
    with torch.no_grad():
        adapted = model.forward_encoder(x, x_lens)[0]
    assert uninstall_adapters(model) > 0
    assert list(model.state_dict()) == list(base.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # bit for bit, merged and unmerged
    assert all(p.requires_grad for p in model.parameters())
    assert type(model.joiner.encoder_proj) is torch.nn.Linear
    base.eval()
    with torch.no_grad():
        assert torch.equal(model.forward_encoder(x, x_lens)[0], base.forward_encoder(x, x_lens)[0])
    if preset in ("encoder", "all_linear"):
        assert (adapted - base.forward_encoder(x, x_lens)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_decoder_and_joiner_adapters_train_alone(kind):
    model = _adapted(kind, "decoder,joiner")
    freeze_all_but_adapters(model)
    set_adapter_training(model)
    x, x_lens = _inputs()
    simple, pruned, _ = model(x, x_lens, [[1, 2, 3], [4, 5]], prune_range=3)
    (simple + pruned).backward()
    names = set(adapter_parameter_names(model))
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in names), n
    assert sum(float(p.grad.abs().sum()) for n, p in model.named_parameters() if n in names) > 0
