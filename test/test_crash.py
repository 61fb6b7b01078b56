"""kill -9 at seeded random moments of training and of export: every file under a final
name is whole (loads, finite, or one complete export set), and what a crash leaves behind
is a temporary file that a later run removes."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch
from runs import RECIPES, model_flags, train_args

from icefall.checkpoint import load_checkpoint_file
from icefall.files import ORPHAN_AFTER_SECONDS, remove_stale_temporaries

pytestmark = pytest.mark.slow


def _start(script: str, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RECIPES / "zipformer" / script), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_after(proc: subprocess.Popen, seconds: float) -> None:
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until ``path`` exists (or the process ends, or ``timeout`` seconds pass)."""
    end = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < end:
        time.sleep(0.1)


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".tmp." in p.name]


def test_kill_9_during_training_leaves_only_whole_checkpoints(corpus, tmp_path):
    rng = random.Random(1234)
    for attempt in range(3):
        exp = tmp_path / f"exp{attempt}"
        proc = _start("train.py", train_args(corpus, exp, "a", 2, "--save-every-n", "1",
                                             "--keep-last-k", "1000"))
        _wait_for(exp / "log", proc)  # start-up time varies with the machine's load
        _kill_after(proc, rng.uniform(1.0, 8.0))
        if not exp.is_dir():
            continue
        saved = sorted(p for p in exp.glob("*.pt") if not p.name.startswith("."))
        for f in saved:
            ckpt = load_checkpoint_file(f)
            assert all(torch.isfinite(v).all() for v in ckpt["model"].values()), f
        leftovers = _temporaries(exp)
        for t in leftovers:  # a crashed writer's temporaries, aged past the orphan limit
            os.utime(t, (time.time() - ORPHAN_AFTER_SECONDS - 5,) * 2)
        assert sorted(remove_stale_temporaries(exp)) == sorted(leftovers)
        assert not _temporaries(exp)


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.iterdir() if p.suffix == ".onnx" and not p.name.startswith(".")}


def test_kill_9_during_export_leaves_one_whole_set(corpus, base_run, tmp_path):
    """Export A, then export B (same tag, other weights) killed at random moments: the
    files under final names are all A's or all B's, each a loadable ONNX model."""
    tokens = str(Path(corpus["bpe_model"]).parent / "tokens.txt")

    def export_args(exp: Path, averaged: str) -> list[str]:
        return ["--epoch", "8", "--avg", "1", "--use-averaged-model", averaged, "--exp-dir",
                str(exp), "--tokens", tokens, *model_flags()]

    sets = {}
    for name, averaged in (("A", "0"), ("B", "1")):
        exp = tmp_path / name
        exp.mkdir()
        for f in ("epoch-7.pt", "epoch-8.pt"):
            shutil.copy(base_run / f, exp / f)
        proc = _start("export-onnx.py", export_args(exp, averaged))
        assert proc.wait(timeout=600) == 0
        sets[name] = _hashes(exp)
    assert sets["A"] != sets["B"] and sets["A"].keys() == sets["B"].keys()
    rng = random.Random(99)
    for attempt in range(3):
        exp = tmp_path / f"kill{attempt}"
        shutil.copytree(tmp_path / "A", exp)
        _kill_after(_start("export-onnx.py", export_args(exp, "1")), rng.uniform(3.0, 12.0))
        now = _hashes(exp)
        assert now in (sets["A"], sets["B"]), attempt
        for f in now:
            onnx.load(str(exp / f), load_external_data=False)
