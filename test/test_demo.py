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
            "--adapter-epochs", "3",
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
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
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
            assert (exp / "adapter" / f"{kind}-epoch-3-avg-1{suffix}").exists()
    # adapters train --adapter-epochs, full fine-tuning --finetune-epochs
    assert (exp / "full_ft" / "epoch-2.pt").exists()
    assert not (exp / "full_ft" / "epoch-3.pt").exists()
    assert not (exp / "adapter" / "epoch-4.pt").exists()
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
    model = get_model(load_checkpoint_file(recipe / "exp" / "adapter" / "epoch-3.pt")
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


EXTRA_SYSTEM_STAGES = ["train_lora", "decode_lora", "decode_lora_off", "train_adapter_dj",
                "decode_adapter_dj", "decode_adapter_dj_off", "decode_biased"]


def test_extra_systems_run_after_the_default_ones(demo):
    """`--stage 10 --extra-systems 1` after a finished run: LoRA, and the encoder+decoder+
    joiner adapters with their own width and epochs (dj_adapter_dim, dj_epochs, not the
    default adapters' 8 and 3); LoRA trains the adapters' epochs; both off on A decode
    exactly as the base model."""
    recipe, _ = demo
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = run_in_own_group(["bash", str(recipe / "run.sh"), *_demo_args(), "--stage", "10",
                             "--extra-systems", "1", "--lora-r", "1", "--dj-adapter-dim", "4",
                             "--dj-epochs", "4"], env, 600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = recipe / "exp"
    seconds = [line.split("\t")[0] for line in
               (exp / "stage_seconds.tsv").read_text().splitlines()]
    assert seconds[-len(EXTRA_SYSTEM_STAGES):] == EXTRA_SYSTEM_STAGES
    ckpt = load_checkpoint_file(exp / "adapter_dj" / "epoch-4.pt")
    assert ckpt["adapter"] == {"name": "default", "kind": "residual", "dim": 4,
                              "targets": ["encoder", "decoder", "joiner"]}
    assert not (exp / "adapter_dj" / "epoch-5.pt").exists()
    assert (exp / "lora" / "epoch-3.pt").exists()
    assert not (exp / "lora" / "epoch-4.pt").exists()
    w = json.loads((exp / "report.json").read_text())["wer"]
    assert w["lora_off/A"] == w["adapter_dj_off/A"] == w["base/A"]
    base_a = _recogs(recipe, "base", "A")
    assert _recogs(recipe, "lora_off", "A") == base_a
    assert _recogs(recipe, "adapter_dj_off", "A") == base_a
    assert _recogs(recipe, "adapter_dj", "B") != _recogs(recipe, "adapter", "B")


# ------------------------------------------- B-only word errors and the extra systems' report
# Hand-made decoding results (no run): domain A's words THE CAT SAT, B's THE CAT ZEBRA
# QUOKKA, so the B-only words are ZEBRA and QUOKKA, twice in the references of B below.
B_REFS = [("u1", "THE ZEBRA SAT"), ("u2", "QUOKKA CAT"), ("u3", "THE CAT")]
B_HYPS = {  # hypotheses -> (misses, false alarms) of B-only words, counted by hand
    "right": (["THE ZEBRA SAT", "QUOKKA CAT", "THE CAT"], 0),  # 0 errors of 2: 0%
    "one_miss": (["THE CAT SAT", "QUOKKA CAT", "THE CAT"], 1),  # ZEBRA->CAT: 50%
    "miss_all": (["THE CAT SAT", "CAT", "THE CAT"], 2),  # ZEBRA->CAT, QUOKKA deleted: 100%
    "false_alarm": (["THE ZEBRA SAT", "QUOKKA CAT", "THE CAT ZEBRA"], 1),  # inserted: 50%
}


def _make_report_module():
    import importlib.util

    path = ROOT / "egs" / "synth" / "ASR" / "local" / "make_report.py"
    spec = importlib.util.spec_from_file_location("synth_make_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_system(decode: Path, folder: str, test_set: str, wer: float,
                 hyps: str | None = None, tag: str = "greedy_search") -> None:
    """decode/<folder>/ with a wer-summary file and (for B) a recogs file, as decode.py
    writes them."""
    d = decode / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / f"wer-summary-{test_set}-{tag}.txt").write_text(f"settings\tWER\n{tag}\t{wer}\n")
    refs = B_REFS if hyps else [("a1", "THE CAT SAT")]
    hyp_lines = B_HYPS[hyps][0] if hyps else ["THE CAT SAT"]
    lines = []
    for (utt, ref), hyp in zip(refs, hyp_lines):
        lines += [f"{utt}:\tref={ref.split()!r}", f"{utt}:\thyp={hyp.split()!r}"]
    (d / f"recogs-{test_set}-{tag}.txt").write_text("\n".join(lines) + "\n")


def _vocab_dir(tmp_path: Path) -> Path:
    d = tmp_path / "manifests"
    d.mkdir()
    (d / "synth_a_vocab.txt").write_text("THE\nCAT\nSAT\n")
    (d / "synth_b_vocab.txt").write_text("THE\nCAT\nZEBRA\nQUOKKA\n")
    return d


def test_b_only_word_errors_are_counted_from_the_recogs_files(tmp_path):
    mr = _make_report_module()
    words = mr.b_only_words(_vocab_dir(tmp_path))
    assert words == {"ZEBRA", "QUOKKA"}
    decode = tmp_path / "exp" / "decode"
    for folder, hyps in (("base", "miss_all"), ("full_ft", "one_miss"),
                         ("adapter_dj", "false_alarm"), ("adapter_biased", "right")):
        _fake_system(decode, folder, "B", 10.0, hyps, tag="epoch-3-avg-1")
    _fake_system(decode, "base", "A", 3.0)  # no B-only word in A's references: no rate
    rates = mr.read_b_only_errors(tmp_path / "exp", words)
    assert rates == {"base/B": 100.0, "full_ft/B": 50.0, "adapter_dj/B": 50.0,
                     "adapter_biased/B": 0.0}
    assert all(rates[f"{f}/B"] == 100 * B_HYPS[h][1] / 2 for f, h in (
        ("base", "miss_all"), ("full_ft", "one_miss"), ("adapter_dj", "false_alarm")))


def test_make_report_shows_the_extra_systems_and_checks_their_targets(tmp_path):
    mr = _make_report_module()
    exp = tmp_path / "exp"
    decode = exp / "decode"
    for key, wer, hyps in (("base/A", 3.0, None), ("base/B", 50.0, "miss_all"),
                           ("adapter/B", 20.0, "miss_all"), ("adapter_off/A", 3.0, None),
                           ("full_ft/A", 27.0, None), ("full_ft/B", 10.0, "one_miss"),
                           ("lora/B", 18.0, "miss_all"), ("lora_off/A", 3.0, None),
                           ("adapter_dj/B", 15.0, "false_alarm"),
                           ("adapter_dj_off/A", 3.5, None),
                           ("adapter_beam/B", 19.0, "miss_all"),
                           ("adapter_biased/B", 17.0, "right"),
                           ("streaming/B", 21.0, "miss_all"), ("streaming/A", 5.0, None),
                           ("streaming_off/B", 52.0, "miss_all"),
                           ("streaming_off/A", 4.0, None)):
        folder, test_set = key.split("/")
        _fake_system(decode, folder, test_set, wer, hyps)
    (exp / "lora" / "log").mkdir(parents=True)
    (exp / "lora" / "log" / "log-train").write_text(
        "Number of model parameters: 2075529\nA total of 37632 trainable parameters\n")
    (exp / "stage_seconds.tsv").write_text("train_base\t600\ndecode_base\t100\n"
                                           "train_lora\t200\ndecode_biased\t100\n"
                                           "train_causal_base\t500\n")
    mr.report(exp, _vocab_dir(tmp_path))
    report = json.loads((exp / "report.json").read_text())
    assert report["wer"]["lora/B"] == 18.0 and report["wer"]["lora_off/A"] == 3.0
    assert report["b_only_word_error"] == {
        "base/B": 100.0, "adapter/B": 100.0, "full_ft/B": 50.0, "lora/B": 100.0,
        "adapter_dj/B": 50.0, "adapter_beam/B": 100.0, "adapter_biased/B": 0.0,
        "streaming/B": 100.0, "streaming_off/B": 100.0}
    assert report["params"] == {"lora": {"trainable": 37632, "total": 2075529}}
    targets = {t["target"]: (t["met"], t["measured"]) for t in report["targets"]}
    assert targets["stages <= 12 min"] == (True, "11.7 min")  # the extra stages apart
    assert targets["LoRA trains <= 2% of the parameters"] == (True, "37632 of 2075529 (1.81%)")
    # (50 - 18) / (50 - 10) = 80% against (50 - 20) / 40 = 75%
    assert targets["LoRA recovers >= the adapters' share of full fine-tuning's gain on B"] == (
        True, "80% vs 75%")
    assert targets["decoder+joiner adapters: B-only word errors <= 1.5x full fine-tuning's"] \
        == (True, "50.00% vs 50.00%")
    assert targets["LoRA off on A == base/A"][0] is True
    assert targets["decoder+joiner adapters off on A == base/A"][0] is False
    # 21 <= 0.75 * 52 = 39
    assert targets["streaming: adapters lower B's WER by >= 25% of the causal base's"] == (
        True, "21.00% vs 52.00% (adapters off)")
    md = (exp / "report.md").read_text()
    assert "| LoRA, trained on B | 3.00 (off) | 18.00 | 100.00 |" in md
    assert "| adapters: modified beam search, biased to the B-only words | - | 17.00 | 0.00 |" \
        in md
    assert "| adapters: ONNX Runtime fp32 | - | - | - |" in md
    assert "| causal base, streaming (chunk by chunk) | 4.00 (off) | 52.00 | 100.00 |" in md
    assert "| causal base with adapters trained on B, streaming | - | 21.00 | 100.00 |" in md
    assert "(extra systems: 13.3 min)" in md
    # without the extra systems' results, the table has the default rows only
    assert mr.wer_table({"base/A": 3.0}).count("\n") == 1 + len(mr.ROWS)


def test_seed_spread_gives_median_and_range_and_counts_the_runs_meeting_each_target(
        tmp_path, capsys):
    import importlib.util

    path = ROOT / "egs" / "synth" / "ASR" / "local" / "seed_spread.py"
    spec = importlib.util.spec_from_file_location("synth_seed_spread", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    runs = {"s1": (3.0, 50.0, 100.0, True), "s2": (5.0, 40.0, 80.0, False),
            "s3": (4.0, 46.0, 90.0, True)}
    dirs = []
    for name, (a, b, b_only, met) in runs.items():
        d = tmp_path / name
        d.mkdir()
        (d / "report.json").write_text(json.dumps({
            "wer": {"base/A": a, "base/B": b, **({"lora/B": 1.0} if name == "s1" else {})},
            "b_only_word_error": {"base/B": b_only},
            "targets": [{"target": "base/A <= 4% WER", "met": met, "measured": f"{a:.2f}%"}]
            + ([{"target": "lora/B target", "met": True, "measured": "1.00%"}]
               if name == "s1" else [])}))
        dirs.append(d)
    out = tmp_path / "spread.md"
    module.spread(dirs, out)
    text = out.read_text()
    assert text == capsys.readouterr().out
    # medians 4, 46, 90; ranges by hand; lora/B is in one run only: left out
    assert "| base | 4.00 (3.00-5.00) | 46.00 (40.00-50.00) | 90.00 (80.00-100.00) |" in text
    assert "| lora |" not in text
    assert "| base/A <= 4% WER | 2 of 3 runs | 3.00%; 5.00%; 4.00% |" in text
    assert "| lora/B target | 1 of 1 runs | 1.00%; -; - |" in text
    with pytest.raises(FileNotFoundError, match="report.json"):
        module.spread([tmp_path / "s1", tmp_path / "missing"], None)
    from icefall.decode.run_summary import spread_over_runs

    assert spread_over_runs([{"wer": {"x": 1.0}}, {"wer": {"x": 2.0}}]) == {"x": (1.5, 1.0, 2.0)}
