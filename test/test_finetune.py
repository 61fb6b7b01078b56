"""Fine-tuning as icefall does it: where the model's schedules stand in a fine-tuning run
and after its resume, zipformer/finetune.py's defaults, and the footguns icefall refuses."""

from __future__ import annotations

import shutil

import pytest
import torch
from runs import ADAPTER, BASE, RECIPES, one_error_line, run_script, train_args

from icefall.checkpoint import load_checkpoint_file, save_checkpoint
from icefall.cli.train import get_parser, main
from icefall.data import load_bpe_model
from icefall.data.tokenizer import set_model_dims_from_bpe
from icefall.trainer import (
    adjusted_batch_count,
    check_finetune_flags,
    get_params,
    saved_batch_count_offset,
)
from icefall.utils import AttributeDict
from icefall.zipformer import get_model
from icefall.zipformer import scaling as scaling_module


def _random_pretrained(corpus, path) -> None:
    """A ``{"model": state_dict}`` file of the train-args model (an icefall pretrained.pt)."""
    params = AttributeDict(vars(get_parser(BASE.train).parse_args(
        train_args(corpus, path.parent / "unused", "a"))))
    set_model_dims_from_bpe(params, load_bpe_model(corpus["bpe_model"]))
    save_checkpoint(path, model=get_model(params).state_dict())


def _record_batch_counts(monkeypatch) -> list[float]:
    seen: list[float] = []
    original = scaling_module.BatchCounter.set

    def record(self, count):
        seen.append(float(count))
        return original(self, count)

    monkeypatch.setattr(scaling_module.BatchCounter, "set", record)
    return seen


def test_resuming_a_full_finetune_with_do_finetune_0_keeps_its_schedules(
        corpus, tmp_path, monkeypatch):
    """The tutorial resumes with --do-finetune 0 (so that --finetune-ckpt is not loaded
    again). The model's schedules must stay where the fine-tuning run had them: the resumed
    run equals the uninterrupted one."""
    init = tmp_path / "pretrained.pt"
    _random_pretrained(corpus, init)
    seen = _record_batch_counts(monkeypatch)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    small = ("--train-cuts", "domb_cuts_valid.jsonl.gz", "--drop-last", "0")  # fast
    main(BASE.train, train_args(corpus, whole, "b", 2, "--do-finetune", "1",
                                "--finetune-ckpt", str(init), *small))
    first_epoch = load_checkpoint_file(whole / "epoch-1.pt")["params"]
    assert first_epoch["batch_count_offset"] == 1_000_000
    assert min(seen) >= 1_000_000  # every step of the fine-tuning run is past the warm-ups
    seen.clear()
    resumed.mkdir()
    shutil.copy(whole / "epoch-1.pt", resumed / "epoch-1.pt")
    main(BASE.train, train_args(corpus, resumed, "b", 2, "--do-finetune", "0",
                                "--start-epoch", "2", *small))
    assert seen and min(seen) >= 1_000_000 + first_epoch["batch_idx_train"] * 8 / 0.05
    a = load_checkpoint_file(whole / "epoch-2.pt")
    b = load_checkpoint_file(resumed / "epoch-2.pt")
    assert b["params"]["batch_count_offset"] == 1_000_000 and not b["params"]["do_finetune"]
    diff = max(float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"])
    assert diff <= 1e-6


def test_offset_of_older_checkpoints_comes_from_their_do_finetune():
    params = AttributeDict(get_params(), do_finetune=False, finetune_batch_count=100_000.0,
                           batch_idx_train=0, max_duration=600, world_size=1,
                           ref_duration=600)
    assert saved_batch_count_offset(params, {"do_finetune": True}) == 100_000
    assert saved_batch_count_offset(params, {"do_finetune": False}) == 0
    assert saved_batch_count_offset(params, {"batch_count_offset": 5.0}) == 5.0
    assert adjusted_batch_count(AttributeDict(params, batch_idx_train=10)) == 10
    params.batch_count_offset = 100_000.0
    assert adjusted_batch_count(AttributeDict(params, batch_idx_train=10)) == 100_010


def test_adapters_on_a_random_frozen_base_are_refused(corpus, tmp_path):
    """--do-finetune 0 --start-epoch 1 with adapters would train adapters on a random,
    frozen base; icefall refuses, and so does this toolkit (a resume is allowed)."""
    flags = AttributeDict(use_adapters=True, do_finetune=False, finetune_ckpt=None)
    with pytest.raises(ValueError, match="random, frozen base"):
        check_finetune_flags(flags, resuming=False)
    check_finetune_flags(flags, resuming=True)
    check_finetune_flags(AttributeDict(flags, use_adapters=False), resuming=False)
    line = one_error_line(run_script("zipformer_adapter", "train.py", train_args(
        corpus, tmp_path / "e", "b", 1, "--do-finetune", "0", "--start-epoch", "1",
        "--use-adapters", "1")))
    assert "random, frozen base" in line
    assert not (tmp_path / "e" / "epoch-1.pt").exists()


def _finetune_recipe():
    import importlib.util

    spec = importlib.util.spec_from_file_location("finetune_script",
                                                  RECIPES / "zipformer" / "finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finetune_py_has_icefalls_defaults():
    """zipformer/finetune.py: base-lr 0.0045, lr-batches 100000, lr-epochs 100, fine-tuning
    on; the adapter recipe's defaults are unchanged (0.045, 7500, 3.5)."""
    recipe = _finetune_recipe().RECIPE
    args = get_parser(recipe).parse_args([])
    assert (args.base_lr, args.lr_batches, args.lr_epochs) == (0.0045, 100000, 100)
    assert args.do_finetune and not args.use_adapters
    assert recipe.finetune_batch_count == 100_000
    adapter = get_parser(ADAPTER.train).parse_args([])
    assert (adapter.base_lr, adapter.lr_batches, adapter.lr_epochs) == (0.045, 7500, 3.5)
    base = get_parser(BASE.train).parse_args([])
    assert (base.base_lr, base.lr_batches, base.lr_epochs) == (0.045, 7500, 3.5)


def test_finetune_py_runs_with_its_offset(corpus, tmp_path, monkeypatch):
    init = tmp_path / "pretrained.pt"
    _random_pretrained(corpus, init)
    seen = _record_batch_counts(monkeypatch)
    exp = tmp_path / "ft"
    _finetune_recipe().main(_finetune_recipe().RECIPE, train_args(
        corpus, exp, "b", 1, "--finetune-ckpt", str(init), "--train-cuts",
        "domb_cuts_valid.jsonl.gz", "--drop-last", "0"))
    assert load_checkpoint_file(exp / "epoch-1.pt")["params"]["batch_count_offset"] == 100_000
    assert seen and 100_000 <= min(seen) < 1_000_000
    assert torch.isfinite(torch.tensor(seen)).all()
