"""Separate validation sets (--valid-cuts repeated or listed, each logged and written to
TensorBoard under its name) and manifests found under icefall's GigaSpeech names."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from runs import _RECIPES, ADAPTER, BASE, train_args

from icefall.checkpoint import load_checkpoint_file
from icefall.cli.train import get_parser, main, resolve_valid_cuts
from icefall.data import AsrDataModule, load_bpe_model, load_cuts
from icefall.data.manifests import find_manifest, parse_named_sets
from icefall.decode.recipe import load_test_sets
from icefall.trainer import _manifest_paths, compute_loss, validation_sets
from icefall.utils import AttributeDict
from icefall.zipformer import get_model


def test_named_sets_parse_names_joins_and_alternatives():
    assert parse_named_sets("dev=a.jsonl.gz+b.jsonl.gz, giga=c.jsonl.gz|d.jsonl.gz") == [
        ("dev", ["a.jsonl.gz", "b.jsonl.gz"]), ("giga", ["c.jsonl.gz|d.jsonl.gz"])]
    assert parse_named_sets("doma_cuts_valid.jsonl.gz,x=y.jsonl.gz") == [
        ("doma_cuts_valid", ["doma_cuts_valid.jsonl.gz"]), ("x", ["y.jsonl.gz"])]
    for bad in ("a=", "=b.jsonl.gz", "a=x.jsonl.gz,a=y.jsonl.gz"):
        with pytest.raises(ValueError):
            parse_named_sets(bad)


def test_find_manifest_takes_the_alternative_that_exists(tmp_path):
    (tmp_path / "cuts_DEV.jsonl.gz").write_text("")
    name = _RECIPES.GIGASPEECH_DEV
    assert find_manifest(tmp_path, name) == tmp_path / "cuts_DEV.jsonl.gz"
    (tmp_path / "gigaspeech_cuts_DEV.jsonl.gz").write_text("")
    assert find_manifest(tmp_path, name) == tmp_path / "gigaspeech_cuts_DEV.jsonl.gz"
    with pytest.raises(FileNotFoundError, match=r"gigaspeech_cuts_S.jsonl.gz \(nor "
                                                r"cuts_S.jsonl.gz\)"):
        find_manifest(tmp_path, _RECIPES.GIGASPEECH_TRAIN)


def _defaults(recipe, manifest_dir) -> AttributeDict:
    params = AttributeDict(vars(get_parser(recipe).parse_args(
        ["--manifest-dir", str(manifest_dir)])))
    resolve_valid_cuts(params, recipe)
    return params


def test_adapter_recipe_validates_on_both_domains_when_both_exist(tmp_path):
    (tmp_path / "cuts_DEV.jsonl.gz").write_text("")  # icefall's GigaSpeech name
    (tmp_path / "cuts_S.jsonl.gz").write_text("")
    params = _defaults(ADAPTER.train, tmp_path)
    assert [n for n, _ in validation_sets(params)] == ["gigaspeech"]
    assert _manifest_paths(params, params.train_cuts) == [tmp_path / "cuts_S.jsonl.gz"]
    for part in ("dev-clean", "dev-other"):
        (tmp_path / f"librispeech_cuts_{part}.jsonl.gz").write_text("")
    params = _defaults(ADAPTER.train, tmp_path)
    assert validation_sets(params) == [
        ("gigaspeech", [tmp_path / "cuts_DEV.jsonl.gz"]),
        ("librispeech", [tmp_path / "librispeech_cuts_dev-clean.jsonl.gz",
                         tmp_path / "librispeech_cuts_dev-other.jsonl.gz"])]
    base = _defaults(BASE.train, tmp_path)  # LibriSpeech dev-clean + dev-other: one set
    assert [n for n, _ in validation_sets(base)] == ["librispeech_cuts_dev-clean"]
    given = AttributeDict(params, valid_cuts=["x=a.jsonl.gz", "y=b.jsonl.gz,c.jsonl.gz"])
    resolve_valid_cuts(given, ADAPTER.train)
    assert given.valid_cuts == "x=a.jsonl.gz,y=b.jsonl.gz,c.jsonl.gz"


def _valid_loss(corpus, ckpt: dict, domain: str) -> float:
    """Per-frame validation loss of a checkpoint's model, computed here independently."""
    params = AttributeDict(ckpt["params"])
    model = get_model(params["model"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    dm = AsrDataModule({"manifest_dir": corpus["manifest_dir"], "max_duration": 16,
                        "num_workers": 0})
    sp = load_bpe_model(corpus["bpe_model"])
    loss = frames = 0.0
    with torch.no_grad():
        for batch in dm.valid_dataloaders(load_cuts(
                corpus["manifest_dir"] / f"dom{domain}_cuts_valid.jsonl.gz")):
            _, info = compute_loss(params, model, sp, batch, is_training=False)
            loss, frames = loss + info["loss"], frames + info["frames"]
    return loss / frames


def test_each_validation_set_is_logged_and_written_under_its_name(corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    exp = tmp_path / "exp"
    args = train_args(corpus, exp, "a", 1, "--tensorboard", "1", "--valid-cuts",
                      "B=domb_cuts_valid.jsonl.gz", "--train-cuts", "doma_cuts_valid.jsonl.gz",
                      "--drop-last", "0")
    args[args.index("--valid-cuts") + 1] = "A=doma_cuts_valid.jsonl.gz"  # the first
    main(BASE.train, args)
    ckpt = load_checkpoint_file(exp / "epoch-1.pt")
    log = (exp / "log" / "log-train").read_text()
    acc = EventAccumulator(str(exp / "tensorboard"))
    acc.Reload()
    for name, domain in (("A", "a"), ("B", "b")):
        logged = re.findall(rf"Validation on {name}: Epoch 1, batch \d+, validation: "
                            r"loss=([\d.e+-]+)", log)
        written = acc.Scalars(f"train/{name}_valid_loss")
        assert len(logged) == len(written) == 1
        expected = _valid_loss(corpus, ckpt, domain)
        assert abs(float(logged[0]) - expected) <= 1e-3 * expected
        assert abs(written[0].value - expected) <= 1e-4 * expected
    assert "train/valid_loss" not in acc.Tags()["scalars"]
    # The first set decides the best validation loss (min(A, B) would not be its loss).
    found = dict((m[0], (float(m[1]), float(m[2]))) for m in re.findall(
        r"Validation on (\w): .*?validation: loss=([\d.]+).*best valid loss ([\d.]+)", log))
    assert found["A"][0] == found["A"][1] == found["B"][1] != found["B"][0]


def test_decode_finds_icefalls_gigaspeech_names(corpus, tmp_path):
    """decode_gigaspeech.py's default test sets, with the manifests under icefall's names."""
    for part, source in (("DEV", "doma"), ("TEST", "domb")):
        shutil.copy(corpus["manifest_dir"] / f"{source}_cuts_valid.jsonl.gz",
                    tmp_path / f"cuts_{part}.jsonl.gz")
    sets = load_test_sets({"test_sets": ADAPTER.decode_gigaspeech.test_sets,
                           "manifest_dir": tmp_path})
    assert list(sets) == ["dev", "test"]
    assert sets["test"][0].id.startswith("domb")
