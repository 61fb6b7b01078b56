"""Adapters from the command line, on runs trained in the tests (conftest ``base_run``,
``adapter_run``, ``lora_run``): adapter-only checkpoints decode and resume as whole ones,
adapter files on top of the base, named adapters, the zipformer_lora recipe (LoRA on and
off, merged into the ONNX export), and clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
import torch
from conftest import TRAIN_MODEL
from runs import ADAPTER, BASE, LORA, decode_args, model_flags, one_error_line, run_script

from icefall.adapter_files import is_adapter_only
from icefall.checkpoint import load_checkpoint_file, save_checkpoint
from icefall.cli.decode import main as decode_main
from icefall.cli.export import adapter_main
from icefall.cli.export import main as export_main
from icefall.cli.train import main as train_main
from icefall.decode.report import read_transcripts
from icefall.inference import load_model
from icefall.zipformer import get_model, lora_modules, merged_state_dict

SETS = "A=doma_cuts_valid.jsonl.gz,B=domb_cuts_valid.jsonl.gz"


def _tokens(corpus) -> Path:
    return Path(corpus["bpe_model"]).parent / "tokens.txt"


def _recogs(res_dir: Path) -> dict[str, list]:
    """{test set: transcripts} of the reports in res_dir."""
    return {name: read_transcripts(next(res_dir.glob(f"recogs-{name}-*.txt")))
            for name in ("A", "B")}


def _decode(recipe, corpus, exp: Path, epoch: int, res: Path, *extra: str, **kw) -> dict:
    return decode_main(recipe, decode_args(corpus, exp, epoch, "--res-dir", str(res), *extra,
                                           **kw))


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _as_whole_checkpoint(src: Path, dst: Path) -> None:
    """An adapter-only checkpoint rewritten in the whole-model format that runs wrote
    before (its base's weights plus the adapters, model_avg likewise, no adapter fields)."""
    data = load_checkpoint_file(src)
    base = load_checkpoint_file(data["base_checkpoint"])["model"]
    whole = {k: v for k, v in data.items()
             if k not in ("format", "version", "adapter_only", "adapter", "base_fingerprint",
                          "base_checkpoint", "model_config")}
    whole["model"] = {**base, **data["model"]}
    whole["model_avg"] = {**base, **data["model_avg"]}
    save_checkpoint(dst, **whole)


def test_adapter_only_checkpoints_decode_as_whole_ones(corpus, adapter_run, tmp_path):
    """--epoch/--avg/--use-averaged-model on adapter-only checkpoints give what the same
    weights give as whole checkpoints (the format older runs wrote, which still loads)."""
    whole = tmp_path / "whole"
    whole.mkdir()
    for epoch in (1, 2):
        assert is_adapter_only(load_checkpoint_file(adapter_run / f"epoch-{epoch}.pt"))
        _as_whole_checkpoint(adapter_run / f"epoch-{epoch}.pt", whole / f"epoch-{epoch}.pt")
    for averaged in (0, 1):
        args = ("--use-adapters", "1")
        a = _decode(ADAPTER.decode, corpus, adapter_run, 2, tmp_path / f"a{averaged}", *args,
                    avg=1 + (1 - averaged), averaged=averaged, sets=SETS)
        b = _decode(ADAPTER.decode, corpus, whole, 2, tmp_path / f"b{averaged}", *args,
                    avg=1 + (1 - averaged), averaged=averaged, sets=SETS)
        assert a == b
        assert _recogs(tmp_path / f"a{averaged}") == _recogs(tmp_path / f"b{averaged}")


def test_resuming_from_an_adapter_only_checkpoint_is_exact(corpus, base_run, adapter_run,
                                                           tmp_path):
    from runs import train_args

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(adapter_run / "epoch-1.pt", resumed / "epoch-1.pt")
    train_main(ADAPTER.train, train_args(corpus, resumed, "b", 2, "--do-finetune", "0",
                                         "--start-epoch", "2", "--use-adapters", "1",
                                         "--adapter-dim", "8"))
    a = load_checkpoint_file(adapter_run / "epoch-2.pt")
    b = load_checkpoint_file(resumed / "epoch-2.pt")
    assert is_adapter_only(b) and b["base_fingerprint"] == a["base_fingerprint"]
    for key in ("model", "model_avg"):
        assert a[key].keys() == b[key].keys()
        assert max(float((a[key][k] - b[key][k]).abs().max()) for k in a[key]) <= 1e-6
    proc = run_script("zipformer_adapter", "train.py", train_args(
        corpus, resumed, "b", 3, "--do-finetune", "0", "--start-epoch", "3",
        "--use-adapters", "1", "--adapter-dim", "8", "--finetune-ckpt",
        str(base_run / "epoch-7.pt")))  # another base than the run's
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]  # after the log lines of the started rank
    assert "epoch-7.pt is not the base model" in line, line
    assert not (resumed / "epoch-3.pt").exists()


@pytest.fixture(scope="module")
def adapter_file(corpus, adapter_run, tmp_path_factory) -> Path:
    """adapter_run's epoch-2 adapters, exported under the name "podcasts"."""
    out = tmp_path_factory.mktemp("adapter_file") / "adapter-podcasts.pt"
    path = adapter_main(str(adapter_run), [
        "--epoch", "2", "--avg", "1", "--use-averaged-model", "0", "--exp-dir",
        str(adapter_run), "--tokens", str(_tokens(corpus)), "--new-adapter-name", "podcasts",
        "--adapter-out", str(out), *model_flags()])
    assert path == out
    return out


def test_export_adapter_takes_the_model_flags_the_checkpoint_stores(corpus, adapter_run,
                                                                   adapter_file, tmp_path):
    """No model flag given: the same file as with the run's flags."""
    out = adapter_main(str(adapter_run), [
        "--epoch", "2", "--avg", "1", "--use-averaged-model", "0", "--exp-dir",
        str(adapter_run), "--tokens", str(_tokens(corpus)), "--new-adapter-name", "podcasts",
        "--adapter-out", str(tmp_path / "adapter-podcasts.pt")])
    got, want = (torch.load(p, weights_only=True) for p in (out, adapter_file))
    for key in ("adapter", "model_config", "base_fingerprint"):
        assert got[key] == want[key], key
    assert got["model"].keys() == want["model"].keys()
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])


def test_adapter_file_on_top_of_the_base_decodes_as_the_adapter_run(
        corpus, base_run, adapter_run, adapter_file, tmp_path):
    data = torch.load(adapter_file, weights_only=True)
    assert data["adapter"] == {"name": "podcasts", "kind": "residual", "dim": 8,
                               "targets": ["encoder"]}
    assert set(data) >= {"model", "base_fingerprint", "base_checkpoint", "model_config"}
    assert "optimizer" not in data
    run = _decode(ADAPTER.decode, corpus, adapter_run, 2, tmp_path / "run", sets=SETS)
    on_base = _decode(BASE.decode, corpus, base_run, 8, tmp_path / "file", "--adapter-file",
                      str(adapter_file), sets=SETS)
    assert on_base == run and _recogs(tmp_path / "file") == _recogs(tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "file").glob("wer-summary-*"))
    assert names and all(n.endswith("-adapter-podcasts.txt") for n in names)
    off = _decode(BASE.decode, corpus, base_run, 8, tmp_path / "off", "--adapter-file",
                  str(adapter_file), "--use-adapters", "0", sets=SETS)
    base = _decode(BASE.decode, corpus, base_run, 8, tmp_path / "base", sets=SETS)
    assert off == base and _recogs(tmp_path / "off") == _recogs(tmp_path / "base")
    assert all(p.name.endswith("-adapters-off.txt")
               for p in (tmp_path / "off").glob("wer-summary-*"))


def test_named_adapters_are_chosen_by_name(corpus, base_run, adapter_run, adapter_file,
                                           tmp_path):
    """The adapter run's own adapter ("default") and the file's ("podcasts") in one model:
    --adapter-name chooses; without it, decoding asks for it."""
    common = decode_args(corpus, adapter_run, 2, "--adapter-file", str(adapter_file),
                         sets="B=domb_cuts_valid.jsonl.gz")
    line = one_error_line(run_script("zipformer_adapter", "decode.py", common))
    assert "2 adapters (default, podcasts): choose one with --adapter-name" in line
    line = one_error_line(run_script("zipformer_adapter", "decode.py",
                                     [*common, "--adapter-name", "meetings"]))
    assert "--adapter-name meetings: no such adapter" in line and "'podcasts'" in line
    for name in ("default", "podcasts"):
        decode_main(ADAPTER.decode, [*common, "--adapter-name", name,
                                     "--res-dir", str(tmp_path / name)])
    a = read_transcripts(next((tmp_path / "default").glob("recogs-B-*.txt")))
    b = read_transcripts(next((tmp_path / "podcasts").glob("recogs-B-*-adapter-podcasts.txt")))
    assert a == b  # the same weights under two names


def test_pretrained_py_with_adapter_files(corpus, base_run, adapter_run, adapter_file,
                                          tmp_path):
    rng = np.random.default_rng(0)
    wave = tmp_path / "speech.wav"
    sf.write(wave, (0.1 * rng.standard_normal(16000 * 2)).astype(np.float32), 16000)
    common = ["--bpe-model", str(corpus["bpe_model"]), *model_flags(), str(wave)]
    texts = {}
    for name, args in {"run": ["--checkpoint", str(adapter_run / "epoch-2.pt")],
                       "file": ["--checkpoint", str(base_run / "epoch-8.pt"),
                                "--adapter-file", str(adapter_file)],
                       "base": ["--checkpoint", str(base_run / "epoch-8.pt")],
                       "off": ["--checkpoint", str(adapter_run / "epoch-2.pt"),
                               "--use-adapters", "0"]}.items():
        proc = run_script("zipformer_adapter" if name != "base" else "zipformer",
                          "pretrained.py", [*args, *common])
        assert proc.returncode == 0, proc.stderr
        texts[name] = proc.stdout
    assert texts["run"] == texts["file"] and texts["base"] == texts["off"]


def test_adapter_file_of_another_base_and_bad_files_are_one_line(corpus, base_run,
                                                                 adapter_file, tmp_path):
    args = decode_args(corpus, base_run, 7, "--adapter-file", str(adapter_file),
                       sets="A=doma_cuts_valid.jsonl.gz")
    line = one_error_line(run_script("zipformer", "decode.py", args))
    assert "adapter 'podcasts' was trained on another base model" in line
    args = decode_args(corpus, base_run, 8, "--adapter-file", str(base_run / "epoch-2.pt"),
                       sets="A=doma_cuts_valid.jsonl.gz")
    assert "is not an adapter file" in one_error_line(run_script("zipformer", "decode.py",
                                                                 args))
    line = one_error_line(run_script("zipformer", "export-onnx.py", [
        "--epoch", "8", "--avg", "1", "--use-averaged-model", "0", "--exp-dir",
        str(base_run), "--tokens", str(_tokens(corpus)), "--adapter-file",
        str(tmp_path / "missing.pt"), *model_flags()]))
    assert "checkpoint not found" in line and "missing.pt" in line


def test_moved_base_is_found_with_base_checkpoint(corpus, base_run, adapter_run, tmp_path):
    data = load_checkpoint_file(adapter_run / "epoch-2.pt")
    moved = tmp_path / "moved"
    moved.mkdir()
    save_checkpoint(moved / "epoch-2.pt", **{**data, "base_checkpoint": "/gone/epoch-8.pt"})
    args = decode_args(corpus, moved, 2, sets="B=domb_cuts_valid.jsonl.gz")
    line = one_error_line(run_script("zipformer_adapter", "decode.py", args))
    assert "base checkpoint /gone/epoch-8.pt" in line and "--base-checkpoint" in line
    a = decode_main(ADAPTER.decode, [*args, "--base-checkpoint", str(base_run / "epoch-8.pt"),
                                     "--res-dir", str(tmp_path / "a")])
    b = _decode(ADAPTER.decode, corpus, adapter_run, 2, tmp_path / "b",
                sets="B=domb_cuts_valid.jsonl.gz")
    assert a == b


def test_export_onnx_with_an_adapter_file_is_the_adapter_runs_export(
        corpus, base_run, adapter_run, adapter_file, tmp_path):
    def export(exp: Path, epoch: int, *extra: str) -> Path:
        link = tmp_path / exp.name
        link.mkdir()
        (link / f"epoch-{epoch}.pt").symlink_to(exp / f"epoch-{epoch}.pt")
        return export_main("unused", False, [
            "--epoch", str(epoch), "--avg", "1", "--use-averaged-model", "0", "--exp-dir",
            str(link), "--tokens", str(_tokens(corpus)), "--int8", "0", *model_flags(),
            *extra]).encoder

    with_file = export(base_run, 8, "--adapter-file", str(adapter_file))
    run = export(adapter_run, 2, "--use-adapters", "1")
    meta = {p.key: p.value for p in onnx.load(str(with_file)).metadata_props}
    assert meta["adapter_name"] == "podcasts" and meta["adapters"].startswith("8 residual")
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((2, 120, 80)).astype(np.float32),
             "x_lens": np.array([120, 77], dtype=np.int64)}
    assert np.array_equal(_session(with_file).run(None, feeds)[0],
                          _session(run).run(None, feeds)[0])


# ---------------------------------------------------------------------------
# zipformer_lora
# ---------------------------------------------------------------------------


def test_lora_run_trains_lora_alone_and_switches_off_exactly(corpus, base_run, lora_run,
                                                              tmp_path):
    ckpt = load_checkpoint_file(lora_run / "epoch-2.pt")
    assert ckpt["adapter"] == {"name": "default", "kind": "lora", "dim": 4,
                               "targets": ["encoder", "joiner"]}
    assert all(k.endswith((".lora_A", ".lora_B")) for k in ckpt["model"])
    assert any(float(v.abs().max()) > 0 for k, v in ckpt["model"].items()
               if k.endswith(".lora_B"))  # trained from zero
    log = (lora_run / "log" / "log-train").read_text()
    assert f"A total of {sum(v.numel() for v in ckpt['model'].values())} trainable" in log
    on = _decode(LORA.decode, corpus, lora_run, 2, tmp_path / "on", sets=SETS)
    off = _decode(LORA.decode, corpus, lora_run, 2, tmp_path / "off", "--use-lora", "0",
                  sets=SETS)
    base = _decode(BASE.decode, corpus, base_run, 8, tmp_path / "base", sets=SETS)
    assert off == base and _recogs(tmp_path / "off") == _recogs(tmp_path / "base")
    assert set(on) == {"A", "B"}


def test_lora_export_is_merged_into_the_base_graph(corpus, base_run, lora_run, tmp_path):
    """export-onnx.py merges LoRA into a model built without it: the same graph, weight
    names and shapes (so the same size and speed) as the base model's export, computing
    the LoRA model's function."""
    def export(exp: Path, epoch: int, script_main) -> Path:
        link = tmp_path / exp.name
        link.mkdir(exist_ok=True)
        (link / f"epoch-{epoch}.pt").symlink_to(exp / f"epoch-{epoch}.pt")
        files = script_main(["--epoch", str(epoch), "--avg", "1", "--use-averaged-model", "0",
                             "--exp-dir", str(link), "--tokens", str(_tokens(corpus)),
                             "--int8", "0", *model_flags()])
        return files.encoder, files.joiner

    (base_enc, base_join) = export(base_run, 8, lambda a: export_main("unused", False, a))
    (lora_enc, lora_join) = export(lora_run, 2, lambda a: export_main(
        "unused", False, a, use_lora_default=True))
    for a_path, b_path in ((base_enc, lora_enc), (base_join, lora_join)):
        a, b = onnx.load(str(a_path)), onnx.load(str(b_path))
        assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
        assert [(t.name, tuple(t.dims)) for t in a.graph.initializer] == \
            [(t.name, tuple(t.dims)) for t in b.graph.initializer]
        assert abs(a_path.stat().st_size - b_path.stat().st_size) < 2000
    meta = {p.key: p.value for p in onnx.load(str(lora_enc)).metadata_props}
    assert meta["adapters"] == "lora rank 4 on encoder,joiner merged into the weights"
    params = {"exp_dir": lora_run, "epoch": 2, "iter": 0, "avg": 1, "use_averaged_model": False,
              "trust_checkpoint": False, "vocab_size": 37, "blank_id": 0, "use_lora": True,
              **TRAIN_MODEL}
    model = load_model(params)
    assert lora_modules(model) and all(m.merged for m in lora_modules(model))
    base = get_model({**params, "use_lora": False}).eval()
    base.load_state_dict(merged_state_dict(model))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 150, 80)).astype(np.float32)
    x_lens = np.array([150, 97], dtype=np.int64)
    out = _session(lora_enc).run(None, {"x": x, "x_lens": x_lens})[0]
    with torch.no_grad():
        enc, lens = model.forward_encoder(torch.from_numpy(x), torch.from_numpy(x_lens))
        ref = model.joiner.encoder_proj(enc).numpy()
    for n, t in enumerate(lens.tolist()):
        np.testing.assert_allclose(out[n, :t], ref[n, :t], atol=1e-4, rtol=0)

