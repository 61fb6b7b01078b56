"""Bad and careless input through the real entry points (train.py, decode.py,
onnx_decode.py, export-onnx.py, pretrained.py, onnx_pretrained.py), table-driven.

Each case must end with exit status 1 and one line on stderr, ``<script>: error: ...``
(after any log lines of a run that had started), no traceback, and every file that
existed before unchanged (logs, which runs append to, aside). The entry points run in this
process (their ``main`` with an argv, as the scripts call it), so the table stays fast;
what needs separate processes (spawned DDP ranks) runs as the script.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from runs import BASE, RECIPES, decode_args, model_flags, train_args

from icefall.cli.decode import main as decode_main
from icefall.cli.decode import onnx_main as onnx_decode_main
from icefall.cli.export import main as export_main
from icefall.cli.onnx import onnx_main as onnx_pretrained_main
from icefall.cli.train import main as train_main
from icefall.cli.transcribe import main as pretrained_main

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _logging_to_this_tests_stderr():
    """Log handlers of an earlier run hold an earlier test's (closed) captured stderr."""
    logging.basicConfig(handlers=[logging.StreamHandler(sys.stderr)], force=True)
    yield
    logging.basicConfig(handlers=[logging.NullHandler()], force=True)



@pytest.fixture(scope="module")
def small_run(corpus, tmp_path_factory) -> Path:
    """Two epochs on 16 cuts (seconds): checkpoints for the decode and export cases."""
    exp = tmp_path_factory.mktemp("small_run")
    train_main(BASE.train, train_args(corpus, exp, "a", 2, "--train-cuts",
                                      "doma_cuts_valid.jsonl.gz", "--drop-last", "0",
                                      "--average-period", "1000", "--save-every-n", "0"))
    return exp


def _read_manifest(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_manifest(path: Path, cuts: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for c in cuts:
            f.write(json.dumps(c) + "\n")


def _manifests(corpus, tmp: Path, edit: Callable[[list[dict]], list[dict]] | None = None,
               name: str = "doma_cuts_valid.jsonl.gz") -> Path:
    """A manifest folder holding the corpus's manifests, ``name`` changed by ``edit``."""
    out = tmp / "fbank"
    shutil.copytree(corpus["manifest_dir"], out, ignore=shutil.ignore_patterns("feats_*"))
    if edit is not None:
        _write_manifest(out / name, edit(_read_manifest(out / name)))
    return out


def _command_source(cuts: list[dict], marker: Path) -> list[dict]:
    """The first cut gets a recording whose audio 'command' would create ``marker``."""
    c = cuts[0]
    c["recording"] = {"id": c["id"], "sources": [{"type": "command", "channels": [0],
                                                  "source": f"touch {marker}"}],
                      "sampling_rate": 16000, "num_samples": int(c["duration"] * 16000),
                      "duration": c["duration"]}
    return cuts


def _wav(path: Path, samples: np.ndarray) -> Path:
    sf.write(str(path), samples, 16000, subtype="FLOAT")
    return path


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    """A bad input: ``setup(corpus, small_run, tmp)`` prepares files and returns the
    entry point and its argv; the single error line must contain ``expect``."""

    script: str
    setup: Callable[..., tuple[Callable, list]]
    expect: str


def _train(corpus, tmp, *extra, recipe=None, manifest_dir=None):
    args = train_args(corpus, tmp / "exp", "a", 1, *extra)
    if manifest_dir is not None:
        args[args.index("--manifest-dir") + 1] = str(manifest_dir)
    return (lambda a: train_main(recipe or BASE.train, a)), args


def _decode(corpus, run, tmp, *extra, sets="A=doma_cuts_valid.jsonl.gz", manifest_dir=None,
            averaged=0):
    args = decode_args(corpus, run, 2, "--res-dir", str(tmp / "res"), *extra, sets=sets,
                       averaged=averaged)
    if manifest_dir is not None:
        args[args.index("--manifest-dir") + 1] = str(manifest_dir)
    return (lambda a: decode_main(BASE.decode, a)), args


def _tokens_file(tmp: Path, lines: list[str]) -> Path:
    (tmp / "tokens.txt").write_text("\n".join(lines) + "\n")
    return tmp / "tokens.txt"


def _pretrained(corpus, run, wav: Path, *extra):
    return (lambda a: pretrained_main(False, a)), [
        "--checkpoint", str(run / "epoch-2.pt"), "--bpe-model", str(corpus["bpe_model"]),
        *model_flags(), *extra, str(wav)]


def _export_set(run: Path) -> list[str]:
    return ["--epoch", "2", "--avg", "1", "--use-averaged-model", "0", "--exp-dir", str(run),
            *model_flags()]


CASES = {
    # --- train.py: flags
    "train max-duration 0": Case("train.py", lambda c, r, t: _train(
        c, t, "--max-duration", "0"), "argument --max-duration: expected a number > 0"),
    "train max-duration negative": Case("train.py", lambda c, r, t: _train(
        c, t, "--max-duration", "-5"), "--max-duration: expected a number > 0, got '-5'"),
    "train num-workers -1": Case("train.py", lambda c, r, t: _train(
        c, t, "--num-workers", "-1"), "--num-workers: expected an integer >= 0"),
    "train world-size 0": Case("train.py", lambda c, r, t: _train(
        c, t, "--world-size", "0"), "--world-size: expected an integer > 0"),
    "train start-epoch 0": Case("train.py", lambda c, r, t: _train(
        c, t, "--start-epoch", "0"), "--start-epoch: expected an integer > 0"),
    "train fp16 and bf16": Case("train.py", lambda c, r, t: _train(
        c, t, "--use-fp16", "1", "--use-bf16", "1"), "exclude each other"),
    "finetune without checkpoint": Case("train.py", lambda c, r, t: _train(
        c, t, "--do-finetune", "1", "--use-adapters", "1"),
        "--do-finetune 1 needs --finetune-ckpt"),
    "adapters on a random base": Case("train.py", lambda c, r, t: _train(
        c, t, "--do-finetune", "0", "--use-adapters", "1"), "random, frozen base"),
    "missing bpe model": Case("train.py", lambda c, r, t: _train(
        c, t, "--bpe-model", str(t / "none.model")), "none.model"),
    "musan manifest missing": Case("train.py", lambda c, r, t: _train(
        c, t, "--enable-musan", "1"), "--enable-musan 1 needs"),
    "exp-dir is a file": Case("train.py", lambda c, r, t: (
        (t / "exp").write_text("not a folder"), _train(c, t))[1], "exp"),
    # --- train.py: manifests
    "truncated manifest": Case("train.py", lambda c, r, t: (
        (m := _manifests(c, t)), (m / "doma_cuts_train.jsonl.gz").write_bytes(
            (m / "doma_cuts_train.jsonl.gz").read_bytes()[:300]),
        _train(c, t, manifest_dir=m))[2], "doma_cuts_train.jsonl.gz"),
    "zero-duration cut": Case("train.py", lambda c, r, t: _train(c, t, manifest_dir=_manifests(
        c, t, lambda cuts: [{**cuts[0], "duration": 0.0}, *cuts[1:]],
        "doma_cuts_train.jsonl.gz")), "has duration 0"),
    "missing feature file": Case("train.py", lambda c, r, t: _train(c, t, manifest_dir=_manifests(
        c, t, lambda cuts: [{**cuts[0], "features": {**cuts[0]["features"],
                                                     "storage_key": "gone.npy"}}, *cuts[1:]],
        "doma_cuts_train.jsonl.gz")), "features not found"),
    "duplicate cut ids": Case("train.py", lambda c, r, t: _train(c, t, manifest_dir=_manifests(
        c, t, lambda cuts: [cuts[0], *cuts], "doma_cuts_train.jsonl.gz")), "appears twice"),
    "non-utf8 manifest": Case("train.py", lambda c, r, t: (
        (m := _manifests(c, t)), (m / "doma_cuts_train.jsonl.gz").write_bytes(
            gzip.compress(b'{"id": "\xff\xfe"}\n')),
        _train(c, t, manifest_dir=m))[2], "doma_cuts_train.jsonl.gz"),
    "command audio source": Case("train.py", lambda c, r, t: _train(
        c, t, "--on-the-fly-feats", "1", manifest_dir=_manifests(
            c, t, lambda cuts: _command_source(cuts, t / "pwned"),
            "doma_cuts_train.jsonl.gz")), "audio source of type 'command'"),
    # --- decode.py / onnx_decode.py
    "decode max-duration 0": Case("decode.py", lambda c, r, t: _decode(
        c, r, t, "--max-duration", "0"), "--max-duration: expected a number > 0"),
    "decode avg too large": Case("decode.py", lambda c, r, t: _decode(
        c, r, t, "--avg", "5"), "--avg 5"),
    "decode empty test set": Case("decode.py", lambda c, r, t: (
        (m := _manifests(c, t)), _write_manifest(m / "empty.jsonl.gz", []),
        _decode(c, r, t, manifest_dir=m, sets="E=empty.jsonl.gz"))[2], "empty"),
    "decode missing test set": Case("decode.py", lambda c, r, t: _decode(
        c, r, t, sets="X=nothing.jsonl.gz"), "nothing.jsonl.gz"),
    "decode command audio source": Case("decode.py", lambda c, r, t: _decode(
        c, r, t, "--on-the-fly-feats", "1", manifest_dir=_manifests(
            c, t, lambda cuts: _command_source(cuts, t / "pwned"))),
        "audio source of type 'command'"),
    "averaged model with no update between": Case("decode.py", lambda c, r, t: _decode(
        c, r, t, averaged=1), "none falls between"),
    "onnx_decode tokens with a huge id": Case("onnx_decode.py", lambda c, r, t: (
        lambda a: onnx_decode_main(BASE.decode, a),
        ["--encoder-model-filename", str(t / "e.onnx"), "--decoder-model-filename",
         str(t / "d.onnx"), "--joiner-model-filename", str(t / "j.onnx"), "--tokens",
         str(_tokens_file(t, ["<blk> 0", "a 999999999"])), "--manifest-dir",
         str(c["manifest_dir"]), "--test-sets", "A=doma_cuts_valid.jsonl.gz",
         "--res-dir", str(t / "res")]), "not below 1000000"),
    "onnx_decode max-duration 0": Case("onnx_decode.py", lambda c, r, t: (
        lambda a: onnx_decode_main(BASE.decode, a),
        ["--encoder-model-filename", "e", "--decoder-model-filename", "d",
         "--joiner-model-filename", "j", "--tokens", "t", "--max-duration", "0"]),
        "--max-duration: expected a number > 0"),
    # --- export-onnx.py
    "export tokens with a gap": Case("export-onnx.py", lambda c, r, t: (
        lambda a: export_main(str(r), False, a),
        [*_export_set(r), "--tokens", str(_tokens_file(t, ["<blk> 0", "a 1", "b 3"]))]),
        "2 is missing"),
    "export avg too large": Case("export-onnx.py", lambda c, r, t: (
        lambda a: export_main(str(r), False, a),
        [*_export_set(r)[:2], "--avg", "9", *_export_set(r)[4:],
         "--tokens", str(Path(c["bpe_model"]).parent / "tokens.txt")]), "--avg 9"),
    # --- pretrained.py / onnx_pretrained.py
    "one-sample wav": Case("pretrained.py", lambda c, r, t: _pretrained(
        c, r, _wav(t / "one.wav", np.zeros(1, np.float32))), "fewer than one 25 ms window"),
    "nan wav": Case("pretrained.py", lambda c, r, t: _pretrained(
        c, r, _wav(t / "nan.wav", np.full(8000, np.nan, np.float32))), "NaN or infinite"),
    "silent wav": Case("pretrained.py", lambda c, r, t: _pretrained(
        c, r, _wav(t / "zero.wav", np.zeros(8000, np.float32))), "silent"),
    "missing wav": Case("pretrained.py", lambda c, r, t: _pretrained(
        c, r, t / "absent.wav"), "absent.wav"),
    "fast_beam_search without k2": Case("pretrained.py", lambda c, r, t: _pretrained(
        c, r, _wav(t / "x.wav", np.random.default_rng(0).normal(0, 0.1, 8000).astype(
            np.float32)), "--method", "fast_beam_search"), "k2"),
    "onnx_pretrained missing model": Case("onnx_pretrained.py", lambda c, r, t: (
        onnx_pretrained_main, ["--encoder-model-filename", str(t / "e.onnx"),
                               "--decoder-model-filename", str(t / "d.onnx"),
                               "--joiner-model-filename", str(t / "j.onnx"), "--tokens",
                               str(_tokens_file(t, ["<blk> 0", "a 1"])), str(t / "x.wav")]),
        "ONNX model not found"),
}


def _hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except logs (runs append to them)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "log" not in p.name
            and "log" not in p.parent.name}


def assert_one_error_line(code, err: str, script: str, expect: str) -> None:
    assert code == 1, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [ln for ln in err.splitlines() if f"{script}: error:" in ln]
    assert len(errors) == 1, err[-2000:]
    assert err.strip().splitlines()[-1] == errors[0]  # the last line, after any logs
    assert expect in errors[0], errors[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_loses_nothing(name, corpus, small_run, tmp_path, capfd,
                                                 monkeypatch):
    case = CASES[name]
    entry, argv = case.setup(corpus, small_run, tmp_path)
    before_run, before_tmp = _hashes(small_run), _hashes(tmp_path)
    monkeypatch.setattr(sys, "argv", [case.script])
    capfd.readouterr()
    with pytest.raises(SystemExit) as stop:
        entry(argv)
    assert_one_error_line(stop.value.code, capfd.readouterr().err, case.script, case.expect)
    assert _hashes(small_run) == before_run
    assert {k: v for k, v in _hashes(tmp_path).items() if k in before_tmp} == before_tmp
    assert not (tmp_path / "pwned").exists()  # no command from a manifest ever ran


# ----------------------------------------------------------------------------- beyond the table


def test_another_run_in_the_exp_dir_is_never_overwritten(corpus, small_run, tmp_path, capfd,
                                                         monkeypatch):
    exp = tmp_path / "exp"
    shutil.copytree(small_run, exp)
    before = _hashes(exp)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(SystemExit) as stop:
        train_main(BASE.train, train_args(corpus, exp, "a", 1))
    assert_one_error_line(stop.value.code, capfd.readouterr().err, "train.py",
                          "already holds a training run")
    assert _hashes(exp) == before
    train_main(BASE.train, train_args(corpus, exp, "a", 1, "--overwrite", "1", "--train-cuts",
                                      "doma_cuts_valid.jsonl.gz", "--drop-last", "0"))
    assert not (exp / "epoch-2.pt").exists()  # the earlier run is gone, not mixed in
    assert (exp / "epoch-1.pt").exists()


def test_resume_mid_epoch_with_other_data_flags_is_refused(corpus, tmp_path, capfd,
                                                            monkeypatch):
    exp = tmp_path / "exp"
    train_main(BASE.train, train_args(corpus, exp, "a", 1, "--save-every-n", "2",
                                      "--num-epochs", "1"))
    before = _hashes(exp)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    capfd.readouterr()
    with pytest.raises(SystemExit) as stop:
        train_main(BASE.train, train_args(corpus, exp, "a", 1, "--start-batch", "2",
                                          "--max-duration", "12"))
    assert_one_error_line(stop.value.code, capfd.readouterr().err, "train.py",
                          "--max-duration 8.0 -> 12.0")
    assert _hashes(exp) == before


def test_ddp_port_in_use_is_one_line(corpus, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, str(RECIPES / "zipformer" / "train.py"),
                               *train_args(corpus, tmp_path / "exp", "a", 1, "--world-size",
                                           "2", "--master-port", str(port))],
                              capture_output=True, text=True, timeout=300)
    assert_one_error_line(proc.returncode, proc.stderr, "train.py",
                          f"--master-port {port} is already in use")


def _port_left_in_time_wait() -> int:
    """A port whose listener has closed, after the listening side closed an accepted
    connection first: that connection stays in TIME_WAIT, as after a DDP run."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            conn, _ = server.accept()
            conn.close()  # the server side closes first: its end enters TIME_WAIT
            client.recv(1)
    return port


def test_port_check_passes_a_port_a_finished_run_left_in_time_wait():
    """Back-to-back DDP runs on one --master-port: the first run's connections do not
    make the second one fail, while a live listener still does."""
    from icefall.preflight import check_port_free

    port = _port_left_in_time_wait()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what the check did before SO_REUSEADDR
    check_port_free(port)
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", port))
        busy.listen(1)
        with pytest.raises(OSError, match=f"--master-port {port} is already in use"):
            check_port_free(port)


def test_export_on_a_full_disk_keeps_the_old_set(corpus, small_run, tmp_path, capfd,
                                                 monkeypatch):
    """The second export fails while quantising (ENOSPC): the first export's files are
    untouched, no new file appears under a final name, no temporary is left."""
    import errno

    import icefall.export.onnx as onnx_export

    exp = tmp_path / "exp"
    shutil.copytree(small_run, exp)
    args = [*_export_set(exp), "--tokens", str(Path(corpus["bpe_model"]).parent / "tokens.txt"),
            "--int8", "0"]
    export_main(str(exp), False, args)
    before = _hashes(exp)

    def full_disk(src, dst, op_types):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_export, "quantize_int8", full_disk)
    monkeypatch.setattr(sys, "argv", ["export-onnx.py"])
    capfd.readouterr()
    with pytest.raises(SystemExit) as stop:
        export_main(str(exp), False, [*args[:-1], "1"])
    assert_one_error_line(stop.value.code, capfd.readouterr().err, "export-onnx.py",
                          f"no space left on device: {exp}")
    assert _hashes(exp) == before
    assert not [p for p in exp.iterdir() if ".tmp." in p.name]


def test_checkpoint_that_runs_a_command_is_refused_even_when_trusted(corpus, tmp_path, capfd,
                                                                     monkeypatch):
    import os

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    torch.save({"model": {}, "x": Payload()}, tmp_path / "evil.pt")
    wav = _wav(tmp_path / "x.wav", np.random.default_rng(0).normal(0, 0.1, 8000).astype(
        np.float32))
    monkeypatch.setattr(sys, "argv", ["pretrained.py"])
    capfd.readouterr()
    with pytest.raises(SystemExit) as stop:
        pretrained_main(False, ["--checkpoint", str(tmp_path / "evil.pt"), "--bpe-model",
                                str(corpus["bpe_model"]), "--trust-checkpoint", "1", str(wav)])
    assert_one_error_line(stop.value.code, capfd.readouterr().err, "pretrained.py",
                          "would call posix.system")
    assert not (tmp_path / "pwned").exists()


def test_stereo_audio_is_mixed_down(tmp_path):
    from icefall.audio import read_sound_file

    left = np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32)
    sf.write(str(tmp_path / "s.wav"), np.stack([left, np.zeros_like(left)], 1), 16000,
             subtype="FLOAT")
    np.testing.assert_allclose(read_sound_file(tmp_path / "s.wav"), left / 2, rtol=0,
                               atol=1e-7)
