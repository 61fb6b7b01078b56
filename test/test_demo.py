"""The embedded demo (egs/synth/ASR/run.sh), CI-sized: every stage with the real recipe
scripts on a few dozen short synthesised utterances and a tiny model."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TRAIN_MODEL

from icefall.checkpoint import load_checkpoint_file
from icefall.zipformer import adapter_parameters, count_parameters, get_model

# The TRAIN_MODEL flags as run.sh takes them (one string), with the CTC head the demo uses.
MODEL_FLAGS = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in TRAIN_MODEL.items())
MODEL_FLAGS += " --use-ctc 1"
STAGES = ["prepare", "train_base", "decode_base", "train_adapter", "decode_adapter",
          "decode_adapter_off", "train_full_ft", "decode_full_ft", "export_onnx",
          "decode_onnx", "decode_onnx_int8", "decode_sherpa_onnx"]


def _demo_args() -> list[str]:
    """Enough data and epochs (about 70 s of training) for varied, partly right
    hypotheses, so that the identities below compare real outputs."""
    return ["--num-utts-a", "160", "--num-utts-b", "60", "--num-dev", "8", "--num-test", "20",
            "--vocab-size", "80", "--base-epochs", "12", "--finetune-epochs", "2",
            "--base-lr", "0.1", "--max-duration", "8", "--num-buckets", "2",
            "--adapter-dim", "8", "--model-flags", MODEL_FLAGS]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A copy of egs/synth/ASR (beside the real egs/librispeech and egs/shared) after a
    whole run."""
    root = tmp_path_factory.mktemp("demo")
    recipe = root / "egs" / "synth" / "ASR"
    shutil.copytree(ROOT / "egs" / "synth" / "ASR", recipe,
                    ignore=shutil.ignore_patterns("data", "exp*", "__pycache__"))
    for shared in ("librispeech", "shared"):
        (root / "egs" / shared).symlink_to(ROOT / "egs" / shared)
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="2")
    proc = run_in_own_group(["bash", str(recipe / "run.sh"), *_demo_args()], env, 1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return recipe, proc


def run_in_own_group(cmd: list[str], env: dict, timeout: float
                     ) -> subprocess.CompletedProcess:
    """subprocess.run in a process group of its own, the whole group killed on timeout (a
    stage's python would otherwise outlive the killed shell)."""
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def test_every_stage_ran_and_left_its_artefacts(demo):
    recipe, proc = demo
    exp = recipe / "exp"
    seconds = dict(line.split("\t") for line in
                   (exp / "stage_seconds.tsv").read_text().splitlines())
    assert list(seconds) == STAGES
    for name in ("report.md", "report.json", "wer.png"):
        assert (exp / name).stat().st_size > 0, name
    assert (exp / "wer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for kind in ("encoder", "decoder", "joiner"):
        for suffix in (".onnx", ".int8.onnx"):
            assert (exp / "adapter" / f"{kind}-epoch-2-avg-1{suffix}").exists()
    for system in ("base", "adapter", "adapter_off", "full_ft", "onnx", "onnx_int8",
                   "sherpa_onnx"):
        assert list((exp / "decode" / system).glob("recogs-*.txt")), system
    assert "| base model (trained on A) |" in proc.stdout


def _tot_losses(log: Path) -> list[float]:
    return [float(m) for m in re.findall(r"tot_loss\[.*?\bloss=([\d.]+)", log.read_text())]


def test_training_loss_falls(demo):
    recipe, _ = demo
    losses = _tot_losses(recipe / "exp" / "base" / "log" / "log-train")
    assert len(losses) >= 3
    assert losses[-1] < 0.7 * losses[0]


def _hyps(recogs: Path) -> dict[str, str]:
    """utterance id -> hypothesis line of a recogs-*.txt file."""
    lines = recogs.read_text().splitlines()
    return {ln.split("\t")[0]: ln.split("\t")[1] for ln in lines if "\thyp=" in ln}


def _recogs(recipe: Path, system: str, test_set: str) -> dict[str, str]:
    files = sorted((recipe / "exp" / "decode" / system).glob(f"recogs-{test_set}-*.txt"))
    assert len(files) == 1, (system, test_set, files)
    return _hyps(files[0])


def test_report_identities_hold(demo):
    """Adapters off on A is the base model exactly; the ONNX export (fp32 in ONNX Runtime
    and in sherpa-onnx) decodes B exactly as PyTorch with adapters on."""
    recipe, _ = demo
    report = json.loads((recipe / "exp" / "report.json").read_text())
    w = report["wer"]
    assert set(w) >= {"base/A", "base/B", "adapter/B", "adapter_off/A", "full_ft/A",
                      "full_ft/B", "onnx/B", "onnx_int8/B", "sherpa_onnx/B"}
    assert w["adapter_off/A"] == w["base/A"]
    assert w["onnx/B"] == w["adapter/B"]
    assert w["sherpa_onnx/B"] == w["adapter/B"]
    # the same hypotheses, not only the same error counts
    base_a = _recogs(recipe, "base", "A")
    assert len(set(base_a.values())) > len(base_a) // 2  # varied: a real comparison
    assert _recogs(recipe, "adapter_off", "A") == base_a
    adapter_b = _recogs(recipe, "adapter", "B")
    assert _recogs(recipe, "onnx", "B") == adapter_b
    assert _recogs(recipe, "sherpa_onnx", "B") == adapter_b
    model = get_model(load_checkpoint_file(recipe / "exp" / "adapter" / "epoch-2.pt")
                      ["params"]["model"])
    assert report["total_params"] == count_parameters(model).total
    assert report["trainable_params"] == sum(p.numel() for p in adapter_parameters(model)) > 0
    assert set(report["seconds"]) == set(STAGES)


def test_rerun_skips_finished_stages_and_redoes_an_interrupted_one(demo):
    """A decoding stage writes into <dir>.tmp and renames it when done: one interrupted
    before the rename (here: onnx, with a partial .tmp) runs again; the rest are skipped."""
    recipe, _ = demo
    decode = recipe / "exp" / "decode"
    before = _recogs(recipe, "onnx", "B")
    (decode / "onnx").rename(decode / "onnx.tmp")
    for f in (decode / "onnx.tmp").glob("wer-summary-*"):
        f.unlink()
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(recipe / "run.sh"), *_demo_args(), "--stop-stage", "9"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("exists, skipping") == len(STAGES) - 1
    assert "Stage 8: decode_onnx\n" in proc.stdout
    assert not (decode / "onnx.tmp").exists()
    assert _recogs(recipe, "onnx", "B") == before
    assert list((decode / "onnx").glob("wer-summary-B-*"))
