"""Checkpoints: weights-only round trips, atomic writes, clear refusals, averaging identities."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from icefall.checkpoint import (
    CheckpointError,
    average_checkpoints,
    average_checkpoints_with_averaged_model,
    average_state_dicts,
    check_state_dict_fits,
    find_checkpoints,
    load_checkpoint_file,
    load_model_state,
    remove_checkpoints,
    save_checkpoint,
    update_averaged_model,
)
from icefall.utils import AttributeDict


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def test_round_trip_with_weights_only(tmp_path):
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    params = {"model": {"encoder_dim": "48,64"}, "batch_idx_train": 7}
    save_checkpoint(tmp_path / "epoch-1.pt", model=model, optimizer=opt, params=params,
                    sampler=None)
    raw = torch.load(tmp_path / "epoch-1.pt", weights_only=True)
    assert raw["params"] == params and raw["sampler"] is None
    other = small_model(seed=1)
    data = load_model_state(other, tmp_path / "epoch-1.pt")
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
    opt2 = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(data["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"],
                       opt.state_dict()["state"][0]["momentum_buffer"])


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "epoch-2.pt"
    save_checkpoint(target, params={"batch_idx_train": 1})
    before = target.read_bytes()

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, params={"batch_idx_train": 2})
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["epoch-2.pt"]


def test_pickled_objects_are_refused_unless_trusted(tmp_path):
    path = tmp_path / "icefall-epoch.pt"
    torch.save({"model": small_model().state_dict(), "params": AttributeDict(a=1)}, path)
    with pytest.raises(CheckpointError,
                       match=r"AttributeDict\), so it only loads with full unpickling.*--trust"):
        load_checkpoint_file(path)
    assert load_checkpoint_file(path, allow_unsafe=True)["params"]["a"] == 1


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pt"):
        load_checkpoint_file(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    for junk in (b"this is not a checkpoint", b"garbage"):
        bad.write_bytes(junk)
        with pytest.raises(CheckpointError, match="cannot read checkpoint .*bad.pt"):
            load_checkpoint_file(bad)


def test_shape_mismatch_names_first_key_and_both_shapes(tmp_path):
    model = small_model()
    state = model.state_dict()
    state["2.weight"] = torch.zeros(2, 5)
    with pytest.raises(CheckpointError, match=r"'2.weight' has shape \(2, 5\) .* \(2, 3\)"):
        check_state_dict_fits(model, state, "x.pt")
    del state["2.weight"]
    with pytest.raises(CheckpointError, match="missing key '2.weight'"):
        check_state_dict_fits(model, state, "x.pt")
    check_state_dict_fits(model, state, "x.pt", allowed_missing=["2.weight"])


def test_average_of_checkpoints_is_the_mean(tmp_path):
    states = [small_model(seed=s).state_dict() for s in range(3)]
    files = []
    for i, s in enumerate(states):
        files.append(tmp_path / f"epoch-{i}.pt")
        save_checkpoint(files[-1], model=s)
    avg = average_checkpoints(files)
    for k in states[0]:
        assert torch.allclose(avg[k], sum(s[k] for s in states) / 3, atol=1e-7)
    assert torch.equal(average_state_dicts(states[:1])["0.weight"], states[0]["0.weight"])


def test_averaged_model_difference_equals_mean_over_the_interval(tmp_path):
    """With the running average updated every batch, the icefall formula recovers the
    plain mean of the models after batches n_start+1 .. n_end."""
    torch.manual_seed(0)
    model, model_avg = small_model(), small_model()
    model_avg.load_state_dict(model.state_dict())
    history = []
    for batch in range(1, 9):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        history.append({k: v.clone() for k, v in model.state_dict().items()})
        update_averaged_model(model_avg, model, batch_idx_train=batch, average_period=1)
        if batch in (3, 8):
            save_checkpoint(tmp_path / f"checkpoint-{batch}.pt", model=model,
                            model_avg=model_avg, params={"batch_idx_train": batch})
    avg = average_checkpoints_with_averaged_model(tmp_path / "checkpoint-3.pt",
                                                  tmp_path / "checkpoint-8.pt")
    for k in avg:
        expected = sum(h[k].double() for h in history[3:8]) / 5
        assert torch.allclose(avg[k].double(), expected, atol=1e-5)


def test_find_and_remove_checkpoints(tmp_path):
    for b in (100, 300, 200, 400):
        save_checkpoint(tmp_path / f"checkpoint-{b}.pt", params={"batch_idx_train": b})
    names = [f.name for f in find_checkpoints(tmp_path)]
    assert names == ["checkpoint-400.pt", "checkpoint-300.pt", "checkpoint-200.pt",
                     "checkpoint-100.pt"]
    assert [f.name for f in find_checkpoints(tmp_path, iteration=250)] == [
        "checkpoint-200.pt", "checkpoint-100.pt"]
    removed = remove_checkpoints(tmp_path, keep_last_k=2)
    assert sorted(f.name for f in removed) == ["checkpoint-100.pt", "checkpoint-200.pt"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-300.pt", "checkpoint-400.pt"]


def test_averaged_model_of_icefall_layout_counts_updates_not_batches(tmp_path):
    """icefall keeps params at the top level of the file; with --average-period 2 and a
    start checkpoint between updates (batch 3), the result is the mean of the snapshots
    the running average took after it (batches 4, 6, 8)."""
    torch.manual_seed(0)
    model, model_avg = small_model(), small_model()
    snapshots = {}
    for batch in range(1, 9):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        if batch % 2 == 0:
            snapshots[batch] = {k: v.clone() for k, v in model.state_dict().items()}
            update_averaged_model(model_avg, model, batch_idx_train=batch, average_period=2)
        if batch in (3, 8):
            torch.save({"model": model.state_dict(), "model_avg": model_avg.state_dict(),
                        "batch_idx_train": batch, "average_period": 2},
                       tmp_path / f"checkpoint-{batch}.pt")
    avg = average_checkpoints_with_averaged_model(tmp_path / "checkpoint-3.pt",
                                                  tmp_path / "checkpoint-8.pt")
    for k in avg:
        expected = sum(snapshots[b][k].double() for b in (4, 6, 8)) / 3
        assert torch.allclose(avg[k].double(), expected, atol=1e-5), k
