"""Mixed precision and device correctness of training, as far as a CPU can show them:
icefall's grad-scale rule, bfloat16 training, --inf-check warnings, the running average
across dtypes, checkpoints written on a GPU read on a CPU, the RNG state, the OOM scan."""

from __future__ import annotations

import copy
import io
import logging
import zipfile
from pathlib import Path

import pytest
import torch
from runs import BASE, one_error_line, run_script, train_args

from icefall.amp import (
    GradScaleGuard,
    GradScaleTooSmallError,
    Precision,
    check_precision_flags,
    choose_precision,
)
from icefall.checkpoint import load_checkpoint_file, update_averaged_model
from icefall.cli.train import get_parser, main
from icefall.data import load_bpe_model
from icefall.data.tokenizer import set_model_dims_from_bpe
from icefall.trainer import (
    get_params,
    get_rng_state,
    make_dataloaders,
    make_train_state,
    scan_pessimistic_batches,
    set_rng_state,
    whiten_state,
)

CPU = torch.device("cpu")


def _scaler(scale: float) -> torch.amp.GradScaler:
    scaler = torch.amp.GradScaler("cpu", init_scale=scale, enabled=True)
    scaler.scale(torch.ones(()))  # creates the scale tensor
    return scaler


def test_grad_scale_doubles_below_8_every_100_and_below_32_every_400():
    saved: list[str] = []
    cases = [  # (scale, batch_idx, scale afterwards)
        (1.0, 0, 2.0), (1.0, 50, 1.0), (4.0, 100, 8.0), (8.0, 100, 8.0), (10.0, 300, 10.0),
        (10.0, 400, 20.0), (31.0, 800, 62.0), (32.0, 400, 32.0), (64.0, 0, 64.0)]
    for scale, batch_idx, after in cases:
        scaler = _scaler(scale)
        guard = GradScaleGuard(scaler, saved.append)
        read = guard.after_step(batch_idx)
        assert read == (scale if batch_idx % 100 == 0 else None)
        assert scaler.get_scale() == after, (scale, batch_idx)
    assert saved == []


def test_small_grad_scale_warns_and_saves_once_then_stops(caplog):
    saved: list[str] = []
    scaler = _scaler(0.005)
    guard = GradScaleGuard(scaler, saved.append)
    with caplog.at_level(logging.WARNING):
        guard.after_step(0)
        scaler.update(0.005)  # the doubling is undone: the scale keeps falling
        guard.after_step(100)
    assert saved == ["-first-warning"]
    assert caplog.text.count("Grad scale is small: 0.00499") == 2
    scaler.update(5e-6)
    with pytest.raises(GradScaleTooSmallError, match="grad_scale is too small, exiting"):
        guard.after_step(200)
    assert saved == ["-first-warning", ""]


def test_disabled_scaler_is_left_alone():
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    assert GradScaleGuard(scaler, lambda s: None).after_step(0) is None


def test_precision_flags():
    assert choose_precision(False, True, CPU) == Precision("cpu", torch.bfloat16)
    assert choose_precision(True, False, CPU) == Precision("cpu", None)  # fp16 needs CUDA
    assert choose_precision(False, False, CPU).dtype is None
    with pytest.raises(ValueError, match="exclude each other"):
        check_precision_flags(True, True, CPU)


def test_both_precisions_is_one_clear_line(corpus, tmp_path):
    proc = run_script("zipformer", "train.py", train_args(
        corpus, tmp_path / "exp", "a", 1, "--use-fp16", "1", "--use-bf16", "1"))
    assert "--use-fp16 1 and --use-bf16 1 exclude each other" in one_error_line(proc)


def test_bf16_training_on_cpu_learns(corpus, tmp_path):
    """bfloat16 autocast on a CPU (slow there: 16 cuts, trained on and validated on)."""
    exp = tmp_path / "bf16"
    main(BASE.train, train_args(corpus, exp, "a", 3, "--use-bf16", "1", "--train-cuts",
                                 "doma_cuts_valid.jsonl.gz", "--drop-last", "0"))
    log = (exp / "log" / "log-train").read_text()
    assert "Training in autocast torch.bfloat16 on cpu" in log
    losses = [float(x) for x in _valid_losses(log)]
    assert len(losses) == 3 and losses[2] < 0.9 * losses[0]
    ckpt = load_checkpoint_file(exp / "epoch-3.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())


def _valid_losses(log: str) -> list[str]:
    import re

    return re.findall(r"validation: loss=([0-9.]+)", log)


def test_inf_check_warns_naming_modules_and_training_skips_the_batch(corpus, tmp_path):
    """Features of 1e30 in a batch make outputs infinite: --inf-check names the modules,
    the step is skipped on the flags of the step's one read, the saved model is finite."""
    import shutil

    from lhotse import load_manifest

    manifest_dir = tmp_path / "fbank"
    shutil.copytree(corpus["manifest_dir"], manifest_dir)
    cuts = load_manifest(manifest_dir / "doma_cuts_train.jsonl.gz")
    bad = cuts[0].load_features() * 0 + 1e30
    np_path = Path(cuts[0].features.storage_path) / cuts[0].features.storage_key
    import numpy as np

    np.save(np_path, bad.astype(np.float32), allow_pickle=False)
    exp = tmp_path / "exp"
    args = train_args(corpus, exp, "a", 1, "--inf-check", "1")
    args[args.index("--manifest-dir") + 1] = str(manifest_dir)
    main(BASE.train, args)
    log = (exp / "log" / "log-train").read_text()
    assert "The sum of encoder_embed" in log and "is not finite" in log
    assert "Non-finite loss at batch" in log or "Non-finite gradients at batch" in log
    ckpt = load_checkpoint_file(exp / "epoch-1.pt")
    assert ckpt["params"]["num_bad_batches"] >= 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_running_average_in_float64_follows_a_float32_model():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    avg = torch.nn.Linear(4, 3).to(torch.float64)
    avg.load_state_dict(model.state_dict())
    expected = {k: v.double().clone() for k, v in model.state_dict().items()}
    for batch in (4, 6, 8):  # period 2: weights 2/4, 2/6, 2/8
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        update_averaged_model(avg, model, batch, 2)
        w = 2 / batch
        expected = {k: v * (1 - w) + model.state_dict()[k].double() * w
                    for k, v in expected.items()}
    for k, v in avg.state_dict().items():
        assert v.dtype == torch.float64
        torch.testing.assert_close(v, expected[k], rtol=0, atol=1e-15)


def _relocate(src: Path, dst: Path, location: str) -> None:
    """Rewrites a torch.save zip so that its storages claim ``location`` (as a file
    written on a GPU does)."""
    with zipfile.ZipFile(src) as zin:
        names = zin.namelist()
        data = {n: zin.read(n) for n in names}
    pkl = next(n for n in names if n.endswith("data.pkl"))
    old = b"X\x03\x00\x00\x00cpu"
    new = b"X" + len(location).to_bytes(4, "little") + location.encode()
    assert old in data[pkl]
    data[pkl] = data[pkl].replace(old, new)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
        for n in names:
            zout.writestr(n, data[n])
    dst.write_bytes(buf.getvalue())


def test_checkpoint_written_on_a_gpu_resumes_on_a_cpu(corpus, base_run, tmp_path):
    """Every tensor of base_run's epoch-1.pt relabelled as cuda:0: it loads (weights only)
    and resumes here, and the checkpoints written here are CPU-only."""
    exp = tmp_path / "resume"
    exp.mkdir()
    _relocate(base_run / "epoch-1.pt", exp / "epoch-1.pt", "cuda:0")
    assert b"cuda:0" in (exp / "epoch-1.pt").read_bytes()
    data = load_checkpoint_file(exp / "epoch-1.pt")
    assert all(v.device.type == "cpu" for v in data["model"].values())
    main(BASE.train, train_args(corpus, exp, "a", 2, "--start-epoch", "2"))
    assert b"cuda" not in (exp / "epoch-2.pt").read_bytes()
    ckpt = load_checkpoint_file(exp / "epoch-2.pt")
    assert ckpt["params"]["batch_idx_train"] > data["params"]["batch_idx_train"]


def test_rng_state_restores_here_and_ignores_cuda_state_without_a_gpu():
    state = get_rng_state()
    assert "cuda" not in state or torch.cuda.is_available()
    first = torch.rand(3)
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 8  # 8 GPUs' states (old format)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), first)


def _state_for(corpus, tmp_path):
    args = get_parser(BASE.train).parse_args(train_args(corpus, tmp_path, "a", 1))
    params = get_params()
    params.update(vars(args))
    params.world_size = 1
    sp = load_bpe_model(params.bpe_model)
    set_model_dims_from_bpe(params, sp)
    st, _ = make_train_state(params, 0, 1, CPU, sp)
    return params, st, make_dataloaders(params, sp, None)


def test_oom_scan_leaves_model_optimizer_and_sampler_unchanged(corpus, tmp_path):
    params, st, data = _state_for(corpus, tmp_path)
    train_dl = data.train
    before = {k: v.clone() for k, v in st.model.state_dict().items()}
    whiten = whiten_state(st.model)
    sampler_state = train_dl.sampler.state_dict()
    scan_pessimistic_batches(params, st, data)
    assert all(torch.equal(v, before[k]) for k, v in st.model.state_dict().items())
    assert all(p.grad is None for p in st.model.parameters())
    assert whiten_state(st.model) == whiten
    assert train_dl.sampler.state_dict() == sampler_state
    assert st.optimizer.state_dict()["state"] == {}


def test_oom_on_a_pessimistic_batch_names_max_duration(corpus, tmp_path, monkeypatch):
    from icefall.trainer import BatchOutOfMemoryError

    params, st, data = _state_for(corpus, tmp_path)

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(type(st.model), "forward", out_of_memory)
    with pytest.raises(BatchOutOfMemoryError, match=r"lower --max-duration \(now 8.0\)"):
        scan_pessimistic_batches(params, st, data)


def test_oom_scan_works_on_a_sampler_resumed_mid_epoch(corpus, tmp_path):
    # A sampler restored from a checkpoint's state holds a generator (it fast-forwards
    # lazily), which cannot be deep-copied: the scan must not need a copy of it.
    params, st, data = _state_for(corpus, tmp_path)
    epoch = [sorted(c.id for c in cuts) for cuts in data.train.sampler]
    next(iter(data.train.sampler))  # (iter() restarts an lhotse sampler's epoch)
    state = copy.deepcopy(data.train.sampler.state_dict())  # as a checkpoint keeps it
    resumed = make_dataloaders(params, load_bpe_model(params.bpe_model), state)
    scan_pessimistic_batches(params, st, resumed)
    assert [sorted(c.id for c in cuts) for cuts in resumed.train.sampler] == epoch[1:]
