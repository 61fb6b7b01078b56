"""Your own data (egs/custom/ASR): the whole command, CI-sized, on a generated folder and
CSV with bad rows; and the preparation's parts (readers, checks, conversion, split,
<unk> share) on their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT, TRAIN_MODEL
from custom_data import BAD_ROWS, make_base_checkpoint, make_bpe, make_csv, make_folder

from icefall.checkpoint import load_checkpoint_file
from icefall.data.user_check import check_rows, convert_audio, split_held_out
from icefall.data.user_data import Row, UserDataError, read_rows
from icefall.data.user_prepare import prepare_user_data
from icefall.zipformer import adapter_parameters, get_model

RUN = ROOT / "egs" / "custom" / "ASR" / "run.sh"
STAGES = ["prepare", "features", "train_adapter", "decode_base", "decode_adapter",
          "decode_adapter_off", "export_onnx", "decode_sherpa_onnx", "decode_sherpa_onnx_int8"]


def _run_args(data: dict, exp: Path) -> list[str]:
    """run.sh's arguments, the user's files relative to their folder (run from there)."""
    def rel(key: str) -> str:
        return str(data[key].relative_to(data["root"]))

    return ["--train-csv", rel("train"), "--test-csv", rel("test"),
            "--finetune-ckpt", rel("base"), "--bpe-model", rel("bpe"), "--exp-dir", str(exp),
            "--num-epochs", "2", "--max-duration", "8",
            "--decode-max-duration", "30", "--adapter-dim", "8", "--num-jobs", "1",
            "--train-flags", "--num-workers 0 --tensorboard 0 --enable-spec-aug 0"]


@pytest.fixture(scope="module")
def user_data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("user")
    bpe = make_bpe(root)
    return {"root": root, "bpe": bpe, "train": make_csv(root, "mytrain", 16, 1, True),
            "test": make_folder(root, "mytest", 4, 2),
            "base": make_base_checkpoint(root / "base.pt", bpe, TRAIN_MODEL)}


@pytest.fixture(scope="module")
def custom_run(user_data, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, float]:
    """The one command, from another folder, with relative paths and no model flags (they
    come from the base checkpoint)."""
    exp = tmp_path_factory.mktemp("custom") / "exp"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="2")
    start = time.time()
    proc = subprocess.run(["bash", str(RUN), *_run_args(user_data, exp)], env=env,
                          cwd=user_data["root"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return exp, proc, time.time() - start


def _recogs(exp: Path, system: str) -> dict[str, str]:
    files = list((exp / "decode" / system).glob("recogs-mytest-*.txt"))
    assert len(files) == 1, (system, files)
    lines = files[0].read_text().splitlines()
    return {ln.split("\t")[0]: ln.split("\t")[1] for ln in lines if "\thyp=" in ln}


def test_the_command_runs_every_stage_and_reports_with_the_users_names(custom_run):
    exp, proc, seconds = custom_run
    print(f"whole command: {seconds:.0f} s")
    stages = [ln.split("\t")[0] for ln in (exp / "stage_seconds.tsv").read_text().splitlines()]
    assert stages == STAGES
    report = json.loads((exp / "report.json").read_text())
    assert (report["train_set"], report["test_set"]) == ("mytrain", "mytest")
    assert set(report["wer"]) == {"base", "adapter", "adapter_off", "sherpa_onnx",
                                  "sherpa_onnx_int8"}
    md = (exp / "report.md").read_text()
    assert "# Adapters trained on mytrain, tested on mytest" in md
    assert "| system | WER (%) on mytest |" in md
    assert (exp / "wer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| base model |" in proc.stdout and "mytest: WER " in proc.stdout


def test_bad_rows_are_listed_and_left_out_and_odd_audio_converted(custom_run):
    exp, proc, _ = custom_run
    sets = json.loads((exp / "report.json").read_text())["data"]
    assert sets["train"]["utterances"] == 16 and sets["train"]["bad_rows"] == len(BAD_ROWS)
    assert sets["test"]["utterances"] == 4 and sets["test"]["bad_rows"] == 1
    assert sets["train"]["converted_files"] == 2 and sets["test"]["converted_files"] == 2
    assert (sets["train"]["kind"], sets["test"]["kind"]) == ("table", "folder")
    rows = [ln.split("\t") for ln in (exp / "data" / "bad_rows.tsv").read_text().splitlines()]
    train_bad = {r[1]: r[3] for r in rows[1:] if r[0] == "train"}
    assert train_bad.keys() == BAD_ROWS.keys()
    for utt, reason in train_bad.items():
        assert reason.startswith(BAD_ROWS[utt]), (utt, reason)
    assert [r[1:] for r in rows[1:] if r[0] == "test"] == [
        ["orphan", "orphan.wav", "no transcript orphan.txt beside it"]]
    assert "mytrain: 4 bad rows" in proc.stderr and "mytest: 1 bad row:" in proc.stderr
    for f in (exp / "data" / "audio").rglob("*.wav"):
        info = sf.info(str(f))
        assert (info.samplerate, info.channels) == (16000, 1), f


def test_adapters_off_is_the_base_and_the_model_came_from_the_checkpoint(custom_run):
    """No model flag was given: train, decode and export took the base checkpoint's
    configuration; adapters off decode exactly as the base model (same hypotheses)."""
    exp, proc, _ = custom_run
    base = _recogs(exp, "base")
    assert len(base) == 4 and _recogs(exp, "adapter_off") == base
    ckpt = load_checkpoint_file(exp / "adapter" / "epoch-2.pt")
    cfg = ckpt["params"]["model"]
    assert {k: cfg[k] for k in TRAIN_MODEL} == {k: TRAIN_MODEL[k] for k in TRAIN_MODEL}
    assert cfg["use_adapters"] and cfg["adapter_dim"] == 8
    report = json.loads((exp / "report.json").read_text())
    assert report["trainable_params"] == sum(p.numel() for p in adapter_parameters(
        get_model(cfg))) > 0
    # the export decodes every test utterance (its WER equals PyTorch's only for a trained
    # model: this random base's long, insertion-ridden outputs flip on the tiny differences
    # between lhotse's and sherpa-onnx's fbank; the demo's test checks the identity)
    assert _recogs(exp, "sherpa_onnx").keys() == _recogs(exp, "adapter").keys()


def test_feedback_lines(custom_run):
    exp, proc, _ = custom_run
    log = (exp / "adapter" / "log" / "log-train").read_text()
    assert "Model flags from" in log and "--encoder-dim 64,64" in log
    assert "Epoch 1/2 done in" in log and "left" in log
    assert "0.00% of" in log and "are <unk>" in log
    assert "--scale-schedule 1: --warm-step" in log
    out = proc.stdout + proc.stderr
    assert "batch 1/1, cuts processed until now is 4" in out
    assert "Quantization parameters for tensor" not in out
    assert "Ignore MatMul" not in out


def test_a_rerun_skips_every_finished_stage(custom_run, user_data):
    exp, _, _ = custom_run
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(RUN), *_run_args(user_data, exp), "--stop-stage", "5"],
                          env=env, cwd=user_data["root"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("exists, skipping") == len(STAGES)


def test_the_report_fails_without_results(custom_run, user_data, tmp_path):
    """The report stage alone, with the preparation's summary but no decoding results,
    fails with one line (and without the summary, says which stage to run)."""
    exp = tmp_path / "exp"
    env = dict(os.environ, PYTHON=sys.executable)

    def report() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(RUN), *_run_args(user_data, exp), "--stage", "6"],
                              env=env, cwd=user_data["root"], capture_output=True, text=True,
                              timeout=60)

    proc = report()
    assert proc.returncode == 1 and "prepare.json not found" in proc.stderr
    (exp / "data").mkdir(parents=True)
    (exp / "data" / "prepare.json").write_bytes(
        (custom_run[0] / "data" / "prepare.json").read_bytes())
    proc = report()
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("make_report.py: error: no wer-summary")
    assert not (exp / "report.md").exists()


# ----------------------------------------------------------------------------- preparation


def _prepare_params(user_data: dict, out: Path, **kw) -> dict:
    params = {"train": user_data["train"], "test": None, "train_name": "mytrain",
              "test_name": "held", "bpe_model": user_data["bpe"], "out_dir": out,
              "test_share": 0.25, "seed": 3, "min_seconds": 1.0, "max_seconds": 20.0,
              "skip_bad_rows": True, "normalize_text": True, "max_unk_share": 0.01}
    params.update(kw)
    return params


def test_bad_rows_can_be_fatal_and_nothing_is_written(user_data, tmp_path):
    with pytest.raises(ValueError, match=r"mytrain: 4 bad rows: missing \(mytrain.csv:18\): "
                                         r"audio not found"):
        prepare_user_data(_prepare_params(user_data, tmp_path / "d", skip_bad_rows=False))
    assert not (tmp_path / "d" / "prepare.json").exists()
    assert not list((tmp_path / "d").rglob("*.jsonl.gz"))


def test_held_out_share_is_seeded_and_disjoint(user_data, tmp_path):
    a = prepare_user_data(_prepare_params(user_data, tmp_path / "a"))
    assert prepare_user_data(_prepare_params(user_data, tmp_path / "b")) == a
    assert a["sets"]["test"]["utterances"] == 4 and a["sets"]["train"]["utterances"] == 12
    from lhotse import load_manifest

    def ids(d: Path, part: str) -> set[str]:
        return {s.id for s in load_manifest(d / "manifests" /
                                            f"custom_supervisions_{part}.jsonl.gz")}

    assert ids(tmp_path / "a", "test") == ids(tmp_path / "b", "test")
    assert not ids(tmp_path / "a", "test") & ids(tmp_path / "a", "train")
    texts = {s.text for s in load_manifest(tmp_path / "a" / "manifests" /
                                          "custom_supervisions_train.jsonl.gz")}
    assert all(t == t.upper() and "." not in t and "!" not in t for t in texts)
    other = split_held_out([Row(f"u{i}", Path("x"), "A", "") for i in range(20)], 0.25, 4)
    assert len(other[1]) == 5


def test_unk_share_stops_the_preparation_and_a_flag_accepts_it(user_data, tmp_path):
    """Words the base's BPE model cannot spell (a letter it never saw, digits) give <unk>
    tokens: above --max-unk-share the preparation stops and names the utterance and its
    words; --max-unk-share 1 accepts them and the summary counts them."""
    import csv as csv_module

    rows = list(csv_module.reader(user_data["train"].read_text().splitlines()))[:5]
    rows[1][2] = "zulu 42 " + rows[1][2]
    csv = user_data["root"] / "unk.csv"
    with open(csv, "w", newline="") as f:
        csv_module.writer(f).writerows(rows)
    with pytest.raises(ValueError, match=r"mytrain: .*% of \d+ BPE tokens are <unk> .*"
                                         r"first: mytrain-000 \(ZULU 42\)"):
        prepare_user_data(_prepare_params(user_data, tmp_path / "d", train=csv))
    summary = prepare_user_data(_prepare_params(user_data, tmp_path / "d", train=csv,
                                                max_unk_share=1.0))
    unk = summary["sets"]["train"]["unk"] if summary["sets"]["train"]["unk"]["unk"] else \
        summary["sets"]["test"]["unk"]
    assert unk["utterances_with_unk"] == 1 and unk["first"] == ["mytrain-000"]


def test_conversion_resamples_and_mixes_down(tmp_path):
    """A 44.1 kHz stereo file of a 440 Hz tone (left) and silence (right) becomes 16 kHz
    mono: as many samples as its duration, the tone at 440 Hz and half the amplitude."""
    t = np.arange(44100) / 44100
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(str(tmp_path / "s.wav"), np.stack([left, 0 * left], 1), 44100)
    convert_audio(tmp_path / "s.wav", tmp_path / "out" / "s.wav")
    y, sr = sf.read(str(tmp_path / "out" / "s.wav"))
    assert sr == 16000 and y.ndim == 1 and len(y) == 16000
    spectrum = np.abs(np.fft.rfft(y))
    assert np.argmax(spectrum) == 440  # 1 Hz bins over one second
    assert abs(np.abs(y[1000:15000]).max() - 0.25) < 0.01


def _write_wav(path: Path, seconds: float = 1.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.random.default_rng(0).normal(0, 0.1, int(16000 * seconds)), 16000)
    return path


def test_every_input_form_gives_the_same_rows(tmp_path):
    """A TSV, a Kaldi data directory (with segments), a folder with .txt files and lhotse
    manifests of the same two utterances read as the same (id, audio, span, text)."""
    a, b = _write_wav(tmp_path / "wav" / "a.wav"), _write_wav(tmp_path / "wav" / "b.wav", 3)
    (tmp_path / "wav" / "a.txt").write_text("hello world\n")
    (tmp_path / "wav" / "b.txt").write_text("good morning\n")
    (tmp_path / "t.tsv").write_text("path\ttext\nwav/a.wav\thello world\n"
                                    "wav/b.wav\tgood morning\n")
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(f"a {a}\nb {b}\n")
    (kaldi / "segments").write_text("a a 0 1.5\nb b 0.0 3.0\n")
    (kaldi / "text").write_text("a hello world\nb good morning\n")
    from lhotse import CutSet, Recording, SupervisionSegment

    cuts = []
    for i, p, d, t in (("a", a, 1.5, "hello world"), ("b", b, 3.0, "good morning")):
        cut = Recording.from_file(str(p), recording_id=i).to_cut()
        cut.supervisions = [SupervisionSegment(i, i, 0.0, d, text=t)]
        cuts.append(cut)
    cuts = CutSet.from_cuts(cuts)
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    expected = [("a", a.resolve(), 0.0, 1.5, "HELLO WORLD"),
                ("b", b.resolve(), 0.0, 3.0, "GOOD MORNING")]
    for source in (tmp_path / "t.tsv", kaldi, tmp_path / "wav", tmp_path / "cuts.jsonl.gz"):
        rows, bad = read_rows(source)
        checked = check_rows(rows, str.upper)
        assert not bad and not checked.bad, (source, bad, checked.bad)
        got = [(r.id, r.path.resolve(), r.start, round(r.duration, 3), r.text)
               for r in checked.rows]
        assert got == expected, source


def test_unreadable_inputs_are_one_line(tmp_path):
    (tmp_path / "h.csv").write_text("file_name,sentence\n")  # no usable header names
    with pytest.raises(UserDataError, match="must name a 'path' and a 'text' column"):
        read_rows(tmp_path / "h.csv")
    with pytest.raises(UserDataError, match="not found"):
        read_rows(tmp_path / "nothing.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserDataError, match="no audio files"):
        read_rows(tmp_path / "empty")
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "wav.scp").write_text("a sox x.wav -t wav - |\n")
    (tmp_path / "k" / "text").write_text("a hello\n")
    rows, bad = read_rows(tmp_path / "k")
    assert not rows and "command" in bad[0].reason
