"""train.py of both recipes on a small generated corpus: learning, adapter fine-tuning
that leaves the base bit-identical, exact resume, DDP on CPU, and clear errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TRAIN_MODEL
from runs import ADAPTER, BASE, LORA, RECIPES, one_error_line, run_script, train_args

from icefall.adapter_files import is_adapter_only, state_fingerprint
from icefall.checkpoint import load_checkpoint_file
from icefall.cli.train import get_parser, main
from icefall.data import AsrDataModule, load_bpe_model, load_cuts
from icefall.trainer import (
    compute_loss,
    get_params,
    make_optimizer,
    setup_trainable_parameters,
)
from icefall.utils import AttributeDict
from icefall.zipformer import adapter_parameter_names, get_model, iter_adapters


def valid_loss(corpus, state: dict, saved_params: dict, domain: str = "a") -> float:
    """Validation loss per frame of a model state (late-training loss weights), computed
    here from the checkpoint's saved flags, independently of the training loop."""
    model = get_model(saved_params["model"])
    model.load_state_dict(state)
    model.eval()
    params = AttributeDict(saved_params)
    params.batch_idx_train = 10**6
    dm = AsrDataModule({"manifest_dir": corpus["manifest_dir"], "max_duration": 16,
                        "num_workers": 0})
    sp = load_bpe_model(corpus["bpe_model"])
    loss = frames = 0.0
    for batch in dm.valid_dataloaders(load_cuts(corpus["manifest_dir"] /
                                                f"dom{domain}_cuts_valid.jsonl.gz")):
        _, info = compute_loss(params, model, sp, batch, is_training=False)
        loss, frames = loss + info["loss"], frames + info["frames"]
    return loss / frames


def test_two_epochs_lower_the_validation_loss(corpus, base_run):
    ckpt = load_checkpoint_file(base_run / "epoch-2.pt")
    torch.manual_seed(42)  # the trainer's --seed: the same initial model
    initial = valid_loss(corpus, get_model(ckpt["params"]["model"]).state_dict(), ckpt["params"])
    after = valid_loss(corpus, ckpt["model"], ckpt["params"])
    assert after < 0.8 * initial
    assert {"epoch-1.pt", "epoch-2.pt", "best-valid-loss.pt"} <= {
        p.name for p in base_run.iterdir()}
    for key in ("model", "model_avg", "optimizer", "scheduler", "grad_scaler", "sampler",
                "params", "rng"):
        assert key in ckpt, key


@pytest.fixture(scope="module")
def whole_adapter_run(corpus, base_run, tmp_path_factory):
    """adapter_run's first epoch again, with --save-full-checkpoints 1."""
    exp = tmp_path_factory.mktemp("adapt_whole")
    main(ADAPTER.train, train_args(corpus, exp, "b", 1, "--do-finetune", "1",
                                   "--finetune-ckpt", str(base_run / "epoch-8.pt"),
                                   "--use-adapters", "1", "--adapter-dim", "8",
                                   "--save-full-checkpoints", "1"))
    return exp


def test_adapter_finetuning_keeps_the_base_bit_identical(corpus, base_run, whole_adapter_run):
    base = load_checkpoint_file(base_run / "epoch-8.pt")["model"]
    exp = whole_adapter_run
    tuned = load_checkpoint_file(exp / "epoch-1.pt")
    adapters = set(adapter_parameter_names(get_model(tuned["params"]["model"])))
    assert adapters and set(tuned["model"]) == set(base) | adapters
    for key, value in base.items():
        assert torch.equal(tuned["model"][key], value), key
        assert torch.equal(tuned["model_avg"][key], value), key  # frozen: averaged as is
    changed = [k for k in adapters if k.endswith("out_proj.weight")
               and tuned["model"][k].abs().sum() > 0]
    assert len(changed) == len([k for k in adapters if k.endswith("out_proj.weight")])
    log = (exp / "log" / "log-train").read_text()
    n = sum(tuned["model"][k].numel() for k in adapters)
    assert f"A total of {n} trainable parameters (" in log
    fresh = {**base, **{k: tuned["model"][k] * 0 for k in adapters}}  # = adapters off
    b_before = valid_loss(corpus, fresh, tuned["params"], "b")
    b_after = valid_loss(corpus, tuned["model"], tuned["params"], "b")
    assert b_after < b_before


def test_adapter_only_checkpoints_hold_what_trains(base_run, adapter_run, whole_adapter_run):
    """The same epoch of the same run, adapter-only (the default) and whole: the adapters,
    their average and the optimizer state are equal; the rest is the base's path and
    fingerprint, and the file is a few percent of the whole one."""
    only = load_checkpoint_file(adapter_run / "epoch-1.pt")
    whole = load_checkpoint_file(whole_adapter_run / "epoch-1.pt")
    base = load_checkpoint_file(base_run / "epoch-8.pt")["model"]
    adapters = set(adapter_parameter_names(get_model(only["params"]["model"])))
    assert set(only["model"]) == set(only["model_avg"]) == adapters
    for key in ("model", "model_avg"):
        for k in adapters:
            assert torch.allclose(only[key][k], whole[key][k], atol=1e-6), (key, k)
    assert only["optimizer"]["state"].keys() == whole["optimizer"]["state"].keys()
    # the base it was trained from, by absolute path (the run's shared copy of base_run)
    stored = Path(only["base_checkpoint"])
    assert stored.is_absolute() and stored.name == "epoch-8.pt"
    assert stored.read_bytes() == (base_run / "epoch-8.pt").read_bytes()
    assert only["base_fingerprint"] == state_fingerprint(base)
    assert only["adapter"] == {"name": "default", "kind": "residual", "dim": 8,
                               "targets": ["encoder"]}
    assert whole["adapter"] == only["adapter"] and not is_adapter_only(whole)
    size = (adapter_run / "epoch-1.pt").stat().st_size
    assert size < 0.1 * (whole_adapter_run / "epoch-1.pt").stat().st_size
    for name in ("best-train-loss.pt", "best-valid-loss.pt"):
        if (adapter_run / name).exists():
            assert is_adapter_only(load_checkpoint_file(adapter_run / name))


def test_resume_from_mid_epoch_checkpoint_is_exact(corpus, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    main(BASE.train, train_args(corpus, full, "a", 1, "--save-every-n", "2",
                                  "--enable-spec-aug", "1"))
    resumed.mkdir()
    shutil.copy(full / "checkpoint-2.pt", resumed / "checkpoint-2.pt")
    main(BASE.train, train_args(corpus, resumed, "a", 1, "--start-batch", "2",
                                  "--enable-spec-aug", "1"))
    a = load_checkpoint_file(full / "epoch-1.pt")
    b = load_checkpoint_file(resumed / "epoch-1.pt")
    assert a["params"]["batch_idx_train"] == b["params"]["batch_idx_train"] > 3
    diff = max(float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"])
    assert diff <= 1e-6
    moved = max(float((a["model"][k] - load_checkpoint_file(full / "checkpoint-2.pt")["model"][k])
                      .abs().max()) for k in a["model"])
    assert moved > 1e-3  # training went on after the checkpoint


def test_ddp_on_cpu_keeps_ranks_identical(corpus, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    exp = tmp_path / "ddp"
    main(BASE.train, train_args(corpus, exp, "a", 1, "--world-size", "2",
                                 "--master-port", "29517",
                                 "--train-cuts", "doma_cuts_valid.jsonl.gz"))
    log = (exp / "log" / "log-train").read_text()
    m = re.search(r"Max parameter checksum difference across 2 ranks: (\S+)", log)
    assert m and float(m.group(1)) == 0.0
    assert "Using 1 intra-op thread(s) per rank" in log  # spawned ranks share the cores
    assert (exp / "log" / "log-train-1").exists()
    assert (exp / "epoch-1.pt").exists()


def test_torchrun_launch_trains_two_identical_ranks(corpus, tmp_path):
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK: each process trains as one rank (gloo on
    CPU), and the ranks end with the same parameters."""
    exp = tmp_path / "torchrun"
    args = train_args(corpus, exp, "a", 1, "--train-cuts", "doma_cuts_valid.jsonl.gz")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", "29531", str(RECIPES / "zipformer" / "train.py"), *args],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (exp / "log" / "log-train").read_text()
    assert "Joined process group: rank 0 of 2 (gloo)" in log
    m = re.search(r"Max parameter checksum difference across 2 ranks: (\S+)", log)
    assert m and float(m.group(1)) == 0.0
    assert (exp / "log" / "log-train-1").exists() and (exp / "epoch-1.pt").exists()


def test_data_too_small_for_a_batch_is_one_clear_line(corpus, tmp_path):
    """A --max-duration above every bucket's total leaves only partial batches, which
    --drop-last drops: the run stops with the reason, not after epochs of nothing."""
    proc = run_script("zipformer", "train.py", train_args(
        corpus, tmp_path / "exp", "a", 1, "--train-cuts", "doma_cuts_valid.jsonl.gz",
        "--max-duration", "100000"))
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]  # after the log lines of the started run
    assert line.startswith("train.py: error: epoch 1 has no training batches")
    assert "--max-duration 100000" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "exp" / "epoch-1.pt").exists()


def test_missing_manifest_is_one_clear_line(corpus, tmp_path):
    args = train_args(corpus, tmp_path / "e", "a", 1)
    args[args.index("--train-cuts") + 1] = "nope_cuts_train.jsonl.gz"
    line = one_error_line(run_script("zipformer", "train.py", args))
    assert "nope_cuts_train.jsonl.gz" in line and "train.py: error:" in line


def test_missing_corrupt_and_mismatched_checkpoints(corpus, base_run, tmp_path):
    def finetune(ckpt: Path, *extra: str) -> str:
        args = train_args(corpus, tmp_path / "e", "b", 1, "--do-finetune", "1",
                          "--finetune-ckpt", str(ckpt), "--adapter-dim", "8", *extra)
        return one_error_line(run_script("zipformer_adapter", "train.py", args))

    assert "checkpoint not found" in finetune(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert "cannot read checkpoint" in finetune(bad)
    line = finetune(base_run / "epoch-2.pt", "--encoder-dim", "64,80")
    assert ("key 'encoder.encoders.1.encoder.layers.0.bypass_scale' has shape (64,) in the "
            "checkpoint but (80,) in the model") in line, line


def _out_proj_rms_after_one_step(adapter_min_rms: float) -> float:
    """rms of every adapter's out_proj weight after one optimizer step from zero."""
    return _zero_init_rms_after_one_step(
        ADAPTER, ["--use-adapters=1", "--adapter-dim=8", f"--adapter-min-rms={adapter_min_rms}"],
        lambda a: a.out_proj.weight)


def _zero_init_rms_after_one_step(spec, extra: list[str], zero_param) -> float:
    """rms of ``zero_param(adapter)`` (zero at the start) over every adapter of the model
    ``spec``'s train.py builds with ``extra``, after one optimizer step."""
    torch.manual_seed(0)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TRAIN_MODEL.items()]
    args = get_parser(spec.train).parse_args(flags + extra + ["--bpe-model=unused"])
    params = get_params()
    params.update(vars(args))
    params.vocab_size = 40
    params.blank_id = 0
    model = get_model(params)
    setup_trainable_parameters(model, use_adapters=True)
    optimizer, _ = make_optimizer(model, params)
    x = torch.randn(2, 60, 80)
    y = [[1, 2, 3], [4, 5]]
    simple, pruned, _ = model(x, torch.tensor([60, 50]), y, prune_range=3)
    (simple + pruned).backward()
    optimizer.step()
    outs = [zero_param(a) for _, a in iter_adapters(model)]
    assert all(w.requires_grad for w in outs)
    return torch.cat([w.detach().flatten() for w in outs]).pow(2).mean().sqrt().item()


def test_adapter_min_rms_sizes_the_first_update_of_zero_adapters():
    """ScaledAdam's first update of a zero tensor is lr * param_min_rms per element (Adam
    normalises the gradient), so the adapter groups' floor scales it proportionally."""
    large = _out_proj_rms_after_one_step(1e-2)
    small = _out_proj_rms_after_one_step(1e-4)
    assert large > 0.0
    assert abs(large / small - 100.0) < 1.0


def test_lora_min_rms_sizes_the_first_update_of_lora_b():
    """LoRA keeps icefall's floor (1e-5) unless --lora-min-rms sets one: lora_B's first
    update from zero scales with it, and --adapter-min-rms does not touch it."""
    def rms(*flags: str) -> float:
        return _zero_init_rms_after_one_step(
            LORA, ["--use-lora=1", "--lora-r=4", *flags], lambda a: a.lora_B)

    default = rms()
    assert default > 0.0
    assert rms("--adapter-min-rms=0.5") == pytest.approx(default, rel=1e-3)  # not its floor
    assert abs(rms("--lora-min-rms=1e-2") / default - 1000.0) < 10.0


def test_finetune_with_mux_init_modules_and_tensorboard(corpus, base_run, tmp_path):
    """Full fine-tuning on B from the base's encoder only, with A's training cuts muxed in,
    and TensorBoard scalars that equal the losses in the text log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    exp = tmp_path / "ft"
    main(ADAPTER.train, train_args(
        corpus, exp, "b", 1, "--do-finetune", "1", "--finetune-ckpt",
        str(base_run / "epoch-8.pt"), "--use-adapters", "0", "--init-modules", "encoder",
        "--use-mux", "1", "--mux-cuts", "doma_cuts_train.jsonl.gz", "--tensorboard", "1",
        "--log-interval", "1", "--use-fp16", "1"))
    log = (exp / "log" / "log-train").read_text()
    assert "--use-fp16 1 needs CUDA; training in float32 on the CPU" in log
    ckpt = load_checkpoint_file(exp / "epoch-1.pt")
    outside = [k for k in get_model(ckpt["params"]["model"]).state_dict()
               if not k.startswith("encoder.")]
    assert f"{len(outside)} tensors keep their initial values" in log

    num_b = sum(1 for _ in load_cuts(corpus["manifest_dir"] / "domb_cuts_train.jsonl.gz"))
    kept = ckpt["sampler"]["diagnostics"]["stats_per_epoch"][0]["kept_cuts"]
    assert kept > num_b  # the epoch drew from both domains

    logged = {int(b): float(v) for b, v in re.findall(
        r"Epoch 1, batch (\d+), loss\[.*?\bloss=([\d.e+-]+)", log)}
    acc = EventAccumulator(str(exp / "tensorboard"))
    acc.Reload()
    written = {e.step: e.value for e in acc.Scalars("train/current_loss")}
    assert len(logged) >= 3 and len(written) == len(logged)
    for b, v in logged.items():  # batch_idx_train counts from 1 within a fresh run
        assert abs(written[b + 1] - v) <= 5e-4 * abs(v), b


def test_mux_weights_are_the_manifests_cut_counts(corpus, tmp_path):
    """Counted once before the ranks start (not by every rank, not by tokenising)."""
    from lhotse import load_manifest

    from icefall.trainer import set_mux_weights

    args = get_parser(ADAPTER.train).parse_args(train_args(
        corpus, tmp_path, "b", 1, "--use-mux", "1", "--mux-cuts", "doma_cuts_train.jsonl.gz"))
    args = AttributeDict(vars(args))
    assert args.mux_weights == ""
    set_mux_weights(args)
    counts = [len(load_manifest(corpus["manifest_dir"] / f"dom{d}_cuts_train.jsonl.gz"))
              for d in "ba"]
    assert args.mux_weights == f"{counts[0]},{counts[1]}"
