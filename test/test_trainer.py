"""train.py of both recipes on a small generated corpus: learning, adapter fine-tuning
that leaves the base bit-identical, exact resume, DDP on CPU, and clear errors."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_MODEL
from corpus import make_corpus

from icefall.checkpoint import load_checkpoint_file
from icefall.data import AsrDataModule, load_bpe_model, load_cuts
from icefall.trainer import ADAPTER_RECIPE, BASE_RECIPE, compute_loss, main
from icefall.utils import AttributeDict
from icefall.zipformer import adapter_parameter_names, get_model

RECIPES = ROOT / "egs" / "librispeech" / "ASR"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), num_train=64, num_valid=12)


def model_flags() -> list[str]:
    flags = []
    for k, v in TINY_MODEL.items():
        if k not in ("vocab_size", "adapter_dim"):
            flags += [f"--{k.replace('_', '-')}", str(v)]
    return flags


def train_args(corpus, exp_dir: Path, domain: str = "a", epochs: int = 1,
               *extra: str) -> list[str]:
    return ["--exp-dir", str(exp_dir), "--manifest-dir", str(corpus["manifest_dir"]),
            "--bpe-model", str(corpus["bpe_model"]),
            "--train-cuts", f"dom{domain}_cuts_train.jsonl.gz",
            "--valid-cuts", f"dom{domain}_cuts_valid.jsonl.gz",
            "--num-epochs", str(epochs), "--max-duration", "16", "--num-workers", "0",
            "--enable-musan", "0", "--enable-spec-aug", "1", "--warm-step", "10",
            "--log-interval", "1", "--tensorboard", "0", "--base-lr", "0.05",
            "--lr-batches", "50", "--lr-epochs", "10", "--ref-duration", "2",
            "--average-period", "2", *model_flags(), *extra]


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


@pytest.fixture(scope="module")
def base_run(corpus, tmp_path_factory):
    exp = tmp_path_factory.mktemp("base")
    main(BASE_RECIPE, train_args(corpus, exp, "a", 2))
    return exp


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


def test_adapter_finetuning_keeps_the_base_bit_identical(corpus, base_run, tmp_path, caplog):
    base = load_checkpoint_file(base_run / "epoch-2.pt")["model"]
    exp = tmp_path / "adapt"
    main(ADAPTER_RECIPE, train_args(corpus, exp, "b", 1, "--do-finetune", "1",
                                    "--finetune-ckpt", str(base_run / "epoch-2.pt"),
                                    "--use-adapters", "1", "--adapter-dim", "8"))
    tuned = load_checkpoint_file(exp / "epoch-1.pt")
    adapters = set(adapter_parameter_names(get_model(tuned["params"]["model"])))
    assert adapters and set(tuned["model"]) == set(base) | adapters
    for key, value in base.items():
        assert torch.equal(tuned["model"][key], value), key
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


def test_resume_from_mid_epoch_checkpoint_is_exact(corpus, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    main(BASE_RECIPE, train_args(corpus, full, "a", 1, "--save-every-n", "2"))
    resumed.mkdir()
    shutil.copy(full / "checkpoint-2.pt", resumed / "checkpoint-2.pt")
    main(BASE_RECIPE, train_args(corpus, resumed, "a", 1, "--start-batch", "2"))
    a = load_checkpoint_file(full / "epoch-1.pt")
    b = load_checkpoint_file(resumed / "epoch-1.pt")
    assert a["params"]["batch_idx_train"] == b["params"]["batch_idx_train"] > 3
    diff = max(float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"])
    assert diff <= 1e-6
    moved = max(float((a["model"][k] - load_checkpoint_file(full / "checkpoint-2.pt")["model"][k])
                      .abs().max()) for k in a["model"])
    assert moved > 1e-3  # training went on after the checkpoint


def test_ddp_on_cpu_keeps_ranks_identical(corpus, tmp_path):
    exp = tmp_path / "ddp"
    main(BASE_RECIPE, train_args(corpus, exp, "a", 1, "--world-size", "2",
                                 "--master-port", "29517"))
    log = (exp / "log" / "log-train").read_text()
    m = re.search(r"Max parameter difference across 2 ranks: (\S+)", log)
    assert m and float(m.group(1)) == 0.0
    assert (exp / "log" / "log-train-1").exists()
    assert (exp / "epoch-1.pt").exists()


def _run_script(recipe: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RECIPES / recipe / "train.py"), *args],
                          capture_output=True, text=True, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_missing_manifest_is_one_clear_line(corpus, tmp_path):
    args = train_args(corpus, tmp_path / "e", "a", 1)
    args[args.index("--train-cuts") + 1] = "nope_cuts_train.jsonl.gz"
    line = _one_error_line(_run_script("zipformer", args))
    assert "nope_cuts_train.jsonl.gz" in line and "train.py: error:" in line


def test_missing_corrupt_and_mismatched_checkpoints(corpus, base_run, tmp_path):
    def finetune(ckpt: Path, *extra: str) -> str:
        args = train_args(corpus, tmp_path / "e", "b", 1, "--do-finetune", "1",
                          "--finetune-ckpt", str(ckpt), "--adapter-dim", "8", *extra)
        return _one_error_line(_run_script("zipformer_adapter", args))

    assert "checkpoint not found" in finetune(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert "cannot read checkpoint" in finetune(bad)
    line = finetune(base_run / "epoch-2.pt", "--encoder-dim", "48,64,80,96,80,80",
                    "--encoder-unmasked-dim", "32,32,48,48,48,48")
    assert ("key 'encoder.encoders.5.encoder.layers.0.bypass_scale' has shape (64,) in the "
            "checkpoint but (80,) in the model") in line, line
