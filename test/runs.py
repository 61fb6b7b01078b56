"""Command lines of the recipe scripts for the small generated corpus (test/corpus.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, TRAIN_MODEL

RECIPES = ROOT / "egs" / "librispeech" / "ASR"


def _load_recipes():
    """egs/librispeech/ASR/recipes.py: the recipes' defaults (as their scripts load it)."""
    spec = importlib.util.spec_from_file_location("librispeech_recipes", RECIPES / "recipes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


_RECIPES = _load_recipes()
BASE, ADAPTER, LORA = _RECIPES.BASE, _RECIPES.ADAPTER, _RECIPES.LORA


def model_flags(adapter_dim: int | None = None) -> list[str]:
    """The TRAIN_MODEL flags (vocab size comes from the BPE model)."""
    flags = []
    for k, v in TRAIN_MODEL.items():
        flags += [f"--{k.replace('_', '-')}", str(v)]
    if adapter_dim is not None:
        flags += ["--adapter-dim", str(adapter_dim)]
    return flags


# A causal model (streaming tests): chunk sizes and left contexts drawn in training; it
# streams with chunk 8 and 32 frames of left context (STREAM_FLAGS).
CAUSAL_FLAGS = ["--causal", "1", "--chunk-size", "8,16", "--left-context-frames", "32,64"]
STREAM_FLAGS = ["--causal", "1", "--chunk-size", "8", "--left-context-frames", "32"]


def train_args(corpus, exp_dir: Path, domain: str = "a", epochs: int = 1,
               *extra: str) -> list[str]:
    """train.py flags for a short run on one domain of the corpus."""
    return ["--exp-dir", str(exp_dir), "--manifest-dir", str(corpus["manifest_dir"]),
            "--bpe-model", str(corpus["bpe_model"]),
            "--train-cuts", f"dom{domain}_cuts_train.jsonl.gz",
            "--valid-cuts", f"dom{domain}_cuts_valid.jsonl.gz",
            "--num-epochs", str(epochs), "--max-duration", "8", "--num-buckets", "2",
            "--num-workers", "0", "--enable-musan", "0", "--enable-spec-aug", "0",
            "--warm-step", "20", "--log-interval", "5", "--tensorboard", "0",
            "--base-lr", "0.05", "--lr-batches", "400", "--lr-epochs", "20",
            "--lr-warmup-batches", "10", "--ref-duration", "0.05", "--average-period", "2",
            *model_flags(), *extra]


def decode_args(corpus, exp_dir: Path, epoch: int, *extra: str, avg: int = 1,
                averaged: int = 0,
                sets: str = "A=doma_cuts_valid.jsonl.gz,B=domb_cuts_valid.jsonl.gz"
                ) -> list[str]:
    """decode.py flags for a checkpoint of exp_dir."""
    return ["--epoch", str(epoch), "--avg", str(avg), "--use-averaged-model", str(averaged),
            "--exp-dir", str(exp_dir), "--bpe-model", str(corpus["bpe_model"]),
            "--manifest-dir", str(corpus["manifest_dir"]), "--test-sets", sets,
            "--num-workers", "0", "--max-duration", "30", *model_flags(), *extra]


def run_script(recipe: str, script: str, args: list[str]) -> subprocess.CompletedProcess:
    """Runs egs/librispeech/ASR/<recipe>/<script> in a subprocess."""
    return subprocess.run([sys.executable, str(RECIPES / recipe / script), *args],
                          capture_output=True, text=True, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a failed run (asserts there is exactly one)."""
    assert proc.returncode != 0, proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]
