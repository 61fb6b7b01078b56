"""make gpu-check's script runs to the end here (--device cpu --quick), so that a session
lent a GPU spends its minutes on the GPU, not on the script."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_gpu_check_runs_every_check_on_a_cpu(tmp_path, monkeypatch):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device",
                           "cpu", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    checks = report["checks"]
    assert set(checks) == {"train_fp16", "train_bf16", "resume", "decode", "export",
                           "figures"}
    assert all(c["ok"] for c in checks.values()), checks
    assert checks["resume"]["model_max_abs_difference"] == 0.0  # --deterministic 1
    assert checks["decode"]["differing"] == 0  # CPU against CPU here
    figures = report["figures"]
    assert figures["training"]["adapters_throughput_ratio"] > 1.0
    assert 0 < figures["loss"]["share_of_full_step"] < 1
    assert set(figures["decoding"]["rtf_greedy"]) == {"1", "4"}
    section = (out / "gpu-section.md").read_text()
    assert section.startswith("python bench/gpu_check.py") and "| resume | pass" in section
    assert not (out / "work").exists()  # the work folder is removed

    import bench.report

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n")
    monkeypatch.setattr(bench.report, "DOC", doc)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--merge", str(out / "gpu-section.md")])
    from bench.gpu_check import main

    main()
    merged = doc.read_text()
    assert "<!-- bench:gpu-check -->" in merged and "| resume | pass" in merged
    assert "Command: `python bench/gpu_check.py" in merged


def test_checkpoint_locations_come_from_the_storages_not_from_key_names(tmp_path):
    """A CPU checkpoint whose RNG state sits under a key named "cuda" is no GPU checkpoint
    (the byte search it replaces failed every GPU-trained run for that key)."""
    import torch

    from bench.gpu_check import load_with_locations

    path = tmp_path / "ckpt.pt"
    torch.save({"rng": {"cuda": torch.zeros(4, dtype=torch.uint8)}, "w": torch.ones(2)}, path)
    assert b"cuda" in path.read_bytes()
    ckpt, locations = load_with_locations(path)
    assert locations == {"cpu"}
    assert torch.equal(ckpt["w"], torch.ones(2)) and ckpt["w"].device.type == "cpu"
