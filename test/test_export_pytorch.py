"""export.py (pretrained.pt and --jit 1), jit_pretrained.py and pretrained.py --tokens.

Oracles: the averaged model recomputed here from the checkpoints' running averages; the
loader icefall uses for pretrained.pt (``torch.load`` then ``load_state_dict(strict=True)``;
icefall's own ``icefall/checkpoint.py`` too when ``ICEFALL_SOURCE`` names an icefall
checkout); the reference parameter layouts of icefall's models; and the eager model's
words for the TorchScript model's.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from conftest import TRAIN_MODEL
from lhotse import CutSet
from runs import ADAPTER, model_flags, one_error_line, run_script
from test_export import _linked_exp, _sound, _tokens
from test_model_layout import read_layout

from icefall.adapter_files import is_adapter_only
from icefall.checkpoint import load_checkpoint_file
from icefall.cli.export import pytorch_main
from icefall.cli.transcribe import jit_main
from icefall.cli.transcribe import main as pretrained_main
from icefall.decode import onnx_runtime as rt
from icefall.decode.jit import jit_greedy_search, load_jit_model
from icefall.decode.search import greedy_search_batch
from icefall.inference import load_model
from icefall.zipformer import get_model, remove_adapters


def _export(exp: Path, corpus, *extra: str) -> Path:
    return pytorch_main("unused", False, ["--exp-dir", str(exp), "--tokens",
                                          str(_tokens(corpus)), *model_flags(), *extra])


def _config(**extra) -> dict:
    return {**TRAIN_MODEL, "vocab_size": 37, "blank_id": 0, "adapter_dim": 8, **extra}


def _icefall_load_checkpoint():
    """icefall's own load_checkpoint, from the checkout named by ICEFALL_SOURCE."""
    source = os.environ.get("ICEFALL_SOURCE")
    if not source:
        return None
    spec = importlib.util.spec_from_file_location(
        "upstream_icefall_checkpoint", Path(source) / "icefall" / "checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_checkpoint


def _load_as_icefall_does(path: Path, model: torch.nn.Module) -> None:
    """icefall's load_checkpoint(path, model, strict=True), or what it does."""
    upstream = _icefall_load_checkpoint()
    if upstream is not None:
        upstream(path, model, strict=True)
        return
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["model"], strict=True)


def _averaged(start: Path, end: Path) -> dict[str, torch.Tensor]:
    """The model averaged over the batches between two checkpoints, from their running
    averages: (avg_end * k_end - avg_start * k_start) / (k_end - k_start)."""
    a, b = load_checkpoint_file(start), load_checkpoint_file(end)
    period = b["params"]["average_period"]
    ka, kb = a["params"]["batch_idx_train"] // period, b["params"]["batch_idx_train"] // period
    return {k: ((v.double() * kb - a["model_avg"][k].double() * ka) / (kb - ka)).float()
            for k, v in b["model_avg"].items()}


@pytest.mark.parametrize("adapters", [1, 0])
def test_pretrained_pt_is_the_averaged_model_and_loads_in_icefall(corpus, adapter_run,
                                                                   tmp_path, adapters):
    exp = tmp_path / "exp"
    for epoch in (1, 2):
        _linked_exp(exp, adapter_run / f"epoch-{epoch}.pt")
    path = _export(exp, corpus, "--epoch", "2", "--avg", "1", "--use-averaged-model", "1",
                   "--use-adapters", str(adapters), "--adapter-dim", "8")
    assert path == exp / "pretrained.pt"
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert list(saved) == ["model"]
    expected = _averaged(exp / "epoch-1.pt", exp / "epoch-2.pt")
    end = load_checkpoint_file(exp / "epoch-2.pt")
    if is_adapter_only(end):  # the frozen base's weights are those of the recorded base
        expected = {**load_checkpoint_file(end["base_checkpoint"])["model"], **expected}
    model = get_model(_config(use_adapters=bool(adapters)))
    assert set(saved["model"]) == set(model.state_dict())
    if not adapters:
        assert set(saved["model"]) < set(expected)  # the adapters' keys are left out
    for key, value in saved["model"].items():
        assert value.dtype == expected[key].dtype
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6)
    _load_as_icefall_does(path, model)


@pytest.mark.parametrize("adapters, layout", [(True, "layout-default-adapters16.tsv"),
                                              (False, "layout-default.tsv")])
def test_exported_keys_of_the_default_model_are_icefalls(reference_dir, adapters, layout):
    """The published model's keys and shapes (icefall's own layouts), from an adapter model
    exported with --use-adapters 1 or 0."""
    config, rows = read_layout(reference_dir / layout)
    with torch.device("meta"):
        model = get_model(dict(config, use_adapters=True, adapter_dim=16))
    if not adapters:
        remove_adapters(model)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == \
        [(k, shape) for k, shape, _ in rows]


def _valid_features(corpus, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
    cuts = CutSet.from_file(corpus["manifest_dir"] / f"dom{domain}_cuts_valid.jsonl.gz")
    x, x_lens = rt.pad_features([c.load_features() for c in cuts])
    return torch.from_numpy(x), torch.from_numpy(x_lens)


def test_jit_model_decodes_the_words_of_the_eager_model(corpus, adapter_run, tmp_path):
    exp = _linked_exp(tmp_path / "exp", adapter_run / "epoch-2.pt")
    flags = ("--epoch", "2", "--avg", "1", "--use-averaged-model", "0", "--use-adapters", "1",
             "--adapter-dim", "8")
    path = _export(exp, corpus, *flags, "--jit", "1")
    assert path == exp / "jit_script.pt"
    jit = load_jit_model(path)
    eager = load_model(_config(exp_dir=exp, epoch=2, iter=0, avg=1, use_averaged_model=False,
                               trust_checkpoint=False, use_adapters=True))
    x, x_lens = _valid_features(corpus, "b")
    with torch.no_grad():
        enc, enc_lens = jit.encoder(features=x, feature_lengths=x_lens)  # icefall's call
        ref, ref_lens = eager.forward_encoder(x, x_lens)
        assert torch.equal(enc_lens, ref_lens)
        for n, m in enumerate(ref_lens.tolist()):
            torch.testing.assert_close(enc[n, :m], ref[n, :m], rtol=0, atol=1e-4)
        ours = jit_greedy_search(jit, enc, enc_lens)
        theirs = greedy_search_batch(eager, ref, ref_lens)
    assert ours == theirs and sum(len(h) for h in ours) > 2 * len(ours)
    # icefall's jit_pretrained.py calls the decoder with a tensor for need_pad.
    y = torch.tensor([[-1, 0], [5, 7]])
    with torch.no_grad():
        torch.testing.assert_close(jit.decoder(y, need_pad=torch.tensor([False])),
                                   eager.decoder(y, need_pad=False))
    assert (jit.decoder.blank_id, jit.decoder.context_size) == (0, 2)


def _run(main, args: list[str], capsys) -> tuple[int, str, str]:
    """A script's main in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(args)
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def test_jit_pretrained_and_pretrained_print_the_same_text(corpus, base_run, tmp_path,
                                                           capsys):
    exp = _linked_exp(tmp_path / "exp", base_run / "epoch-8.pt")
    path = _export(exp, corpus, "--epoch", "8", "--avg", "1", "--use-averaged-model", "0",
                   "--jit", "1")
    waves = [tmp_path / f"s{i}.wav" for i in range(2)]
    for i, w in enumerate(waves):
        _sound(w, seconds=2.0 + i, seed=i)
    checkpoint = ["--checkpoint", str(base_run / "epoch-8.pt"), *model_flags()]
    runs = {
        "jit": _run(jit_main, ["--nn-model-filename", str(path), "--tokens",
                               str(_tokens(corpus)), *map(str, waves)], capsys),
        "tokens": _run(lambda a: pretrained_main(False, a), [
            *checkpoint, "--tokens", str(_tokens(corpus)), *map(str, waves)], capsys),
        "bpe": _run(lambda a: pretrained_main(False, a), [
            *checkpoint, "--bpe-model", str(corpus["bpe_model"]), *map(str, waves)], capsys),
    }
    for name, (status, out, err) in runs.items():
        assert status == 0, (name, err[-2000:])
        assert [ln.split(":")[0] for ln in out.splitlines()] == list(map(str, waves))
    assert runs["jit"][1] == runs["tokens"][1] == runs["bpe"][1]


def test_adapter_recipe_export_and_bad_files(corpus, adapter_run, tmp_path, capsys):
    """zipformer_adapter/export.py's default keeps the adapters; bad inputs are one line."""
    exp = _linked_exp(tmp_path / "exp", adapter_run / "epoch-2.pt")
    pytorch_main(ADAPTER.exp_dir, ADAPTER.use_adapters, [
        "--exp-dir", str(exp), "--tokens", str(_tokens(corpus)), "--epoch", "2", "--avg", "1",
        "--use-averaged-model", "0", "--adapter-dim", "8", *model_flags()])
    saved = torch.load(exp / "pretrained.pt", weights_only=True)["model"]
    assert any(".adapter." in k for k in saved)
    wav = tmp_path / "a.wav"
    _sound(wav)
    status, _, err = _run(jit_main, ["--nn-model-filename", str(exp / "pretrained.pt"),
                                     "--tokens", str(_tokens(corpus)), str(wav)], capsys)
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert "not a TorchScript model" in err
    status, _, err = _run(lambda a: pretrained_main(False, a),
                          ["--checkpoint", str(exp / "pretrained.pt"), str(wav)], capsys)
    assert status == 1 and "--tokens" in err and "--bpe-model" in err
    proc = run_script("zipformer", "jit_pretrained.py", ["--nn-model-filename",
                                                          str(tmp_path / "none.pt"),
                                                          "--tokens", str(_tokens(corpus)),
                                                          str(wav)])
    assert "jit_pretrained.py: error: TorchScript model not found" in one_error_line(proc)
