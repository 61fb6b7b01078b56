"""decode.py / decode_gigaspeech.py / pretrained.py on checkpoints trained in the tests."""

from __future__ import annotations

import gzip
import json

import kaldialign
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TRAIN_MODEL
from corpus import WORDS, word_patterns
from runs import ADAPTER, BASE, decode_args, model_flags, one_error_line, run_script

from icefall.checkpoint import load_checkpoint_file
from icefall.cli.decode import main
from icefall.data import encode, load_bpe_model
from icefall.decode.report import parse_errs_file, read_transcripts, read_wer_summary
from icefall.decode.search import greedy_search_batch, modified_beam_search
from icefall.inference import select_state_dict
from icefall.optim import ScaledAdam
from icefall.zipformer import get_model


def _reports(res_dir, test_set: str) -> dict:
    """{kind: path} of the recogs/errs/wer-summary files of one test set."""
    found = {}
    for kind in ("recogs", "errs", "wer-summary"):
        files = sorted(res_dir.glob(f"{kind}-{test_set}-*.txt"))
        assert len(files) == 1, files
        found[kind] = files[0]
    return found


def test_overfit_model_decodes_its_training_utterances_exactly(corpus):
    """Six short utterances, trained on until greedy search gets them right."""
    sp = load_bpe_model(corpus["bpe_model"])
    patterns, rng = word_patterns(), np.random.default_rng(0)
    texts, feats = [], []
    for _ in range(6):
        words = list(rng.choice(WORDS, size=4, replace=False))
        f = np.concatenate([np.zeros((4, 80), np.float32)] + [patterns[w] for w in words]
                           + [np.zeros((8, 80), np.float32)])
        texts.append(" ".join(words))
        feats.append(torch.from_numpy(f + rng.normal(0, 0.3, f.shape).astype(np.float32)))
    x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    x_lens = torch.tensor([len(f) for f in feats])
    y = encode(sp, texts)
    torch.manual_seed(0)
    model = get_model({**TRAIN_MODEL, "vocab_size": sp.get_piece_size()}).eval()
    opt = ScaledAdam(model.parameters(), lr=0.05, clipping_scale=2.0)
    for _ in range(110):
        simple, pruned, _ = model(x, x_lens, y)
        (0.5 * simple + pruned).backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        assert sp.decode(greedy_search_batch(model, enc, enc_lens)) == texts
        assert sp.decode(modified_beam_search(model, enc, enc_lens, beam=4)) == texts


def test_adapters_off_reproduce_the_base_model_exactly(corpus, base_run, adapter_run, tmp_path):
    base = main(BASE.decode, decode_args(corpus, base_run, 8, "--res-dir",
                                         str(tmp_path / "base")))
    off = main(ADAPTER.decode, decode_args(corpus, adapter_run, 2, "--use-adapters", "0",
                                           "--adapter-dim", "8",
                                           "--res-dir", str(tmp_path / "off")))
    on = main(ADAPTER.decode, decode_args(corpus, adapter_run, 2, "--use-adapters", "1",
                                          "--adapter-dim", "8",
                                          "--res-dir", str(tmp_path / "on")))
    for test_set in ("A", "B"):
        hyps_base = read_transcripts(_reports(tmp_path / "base", test_set)["recogs"])
        hyps_off = read_transcripts(_reports(tmp_path / "off", test_set)["recogs"])
        assert hyps_base == hyps_off
        assert base[test_set] == off[test_set]
    assert on["B"][0][1] < base["B"][0][1]  # adapters trained on B help on B


def test_report_files_agree_with_the_transcripts(corpus, base_run, tmp_path):
    wers = main(BASE.decode, decode_args(corpus, base_run, 8, "--res-dir", str(tmp_path)))
    for test_set in ("A", "B"):
        files = _reports(tmp_path, test_set)
        results = read_transcripts(files["recogs"])
        errors = sum(kaldialign.edit_distance(ref, hyp)["total"] for _, ref, hyp in results)
        words = sum(len(ref) for _, ref, _ in results)
        expected = round(100.0 * errors / words, 2)
        assert parse_errs_file(files["errs"]).wer == pytest.approx(expected, abs=0.005)
        assert read_wer_summary(files["wer-summary"]) == [("greedy_search", expected)]
        assert wers[test_set] == [("greedy_search", expected)]
        assert "greedy_search-epoch-8-avg-1-context-2" in files["recogs"].name


def test_avg_and_averaged_model_equal_manual_averages(base_run):
    params = {"exp_dir": base_run, "trust_checkpoint": False, "iter": 0}
    e1 = load_checkpoint_file(base_run / "epoch-1.pt")
    e2 = load_checkpoint_file(base_run / "epoch-2.pt")
    avg, _ = select_state_dict({**params, "epoch": 2, "avg": 2, "use_averaged_model": False})
    for k, v in avg.items():
        assert torch.allclose(v, (e1["model"][k] + e2["model"][k]) / 2, atol=1e-6), k
    averaged, _ = select_state_dict({**params, "epoch": 2, "avg": 1,
                                     "use_averaged_model": True})
    # each running average holds k = batch_idx_train // average_period updates
    period = e2["params"]["average_period"]
    k1, k2 = (e["params"]["batch_idx_train"] // period for e in (e1, e2))
    assert k2 > k1
    for k, v in averaged.items():
        manual = (e2["model_avg"][k].double() * k2 - e1["model_avg"][k].double() * k1) / (k2 - k1)
        assert torch.allclose(v.double(), manual, atol=1e-5), k


def test_gigaspeech_scoring_normalises_references_and_hypotheses(corpus, base_run, tmp_path):
    src = corpus["manifest_dir"] / "domb_cuts_valid.jsonl.gz"
    dst = corpus["manifest_dir"] / "gigatest_cuts_valid.jsonl.gz"
    with gzip.open(src, "rt") as fin, gzip.open(dst, "wt") as fout:
        for line in fin:
            cut = json.loads(line)
            sup = cut["supervisions"][0]
            sup["text"] = f"<SIL> UM {sup['text']} <COMMA>"
            fout.write(json.dumps(cut) + "\n")
    plain = main(BASE.decode, decode_args(corpus, base_run, 8, "--res-dir",
                                          str(tmp_path / "plain"),
                                          sets="test=domb_cuts_valid.jsonl.gz"))
    giga = main(BASE.decode_gigaspeech, decode_args(corpus, base_run, 8, "--res-dir",
                                                    str(tmp_path / "giga"),
                                                    sets="test=gigatest_cuts_valid.jsonl.gz"))
    assert giga == plain
    refs = [ref for _, ref, _ in read_transcripts(_reports(tmp_path / "giga", "test")["recogs"])]
    assert refs and not any(w in ("<SIL>", "UM", "<COMMA>") for r in refs for w in r)


def test_bad_input_is_one_clear_line(corpus, base_run, tmp_path):
    line = one_error_line(run_script("zipformer", "decode.py",
                                     decode_args(corpus, base_run, 2, avg=5)))
    assert "--epoch 2 --avg 5" in line
    line = one_error_line(run_script("zipformer", "decode.py",
                                     decode_args(corpus, base_run, 2, avg=2, averaged=1)))
    assert "epoch-0.pt" in line
    line = one_error_line(run_script("zipformer", "decode.py", decode_args(
        corpus, base_run, 2, sets="X=missing_cuts_test.jsonl.gz")))
    assert "missing_cuts_test.jsonl.gz" in line
    empty = corpus["manifest_dir"] / "empty_cuts_test.jsonl.gz"
    with gzip.open(empty, "wt"):
        pass
    line = one_error_line(run_script("zipformer", "decode.py", decode_args(
        corpus, base_run, 2, sets="E=empty_cuts_test.jsonl.gz")))
    assert "empty_cuts_test.jsonl.gz" in line
    line = one_error_line(run_script("zipformer", "decode.py", decode_args(
        corpus, base_run, 2, "--use-adapters", "1", sets="A=doma_cuts_valid.jsonl.gz")))
    assert "no adapter weights" in line


def test_pretrained_transcribes_sound_files(corpus, base_run, tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "speech.wav"
    sf.write(good, (0.1 * rng.standard_normal(16000 * 2)).astype(np.float32), 16000)
    common = ["--checkpoint", str(base_run / "epoch-8.pt"), "--bpe-model",
              str(corpus["bpe_model"]), *model_flags()]
    proc = run_script("zipformer", "pretrained.py", [*common, str(good), str(good)])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith(f"{good}:") for ln in lines)
    assert lines[0] == lines[1]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....not really a wave file")
    line = one_error_line(run_script("zipformer", "pretrained.py", [*common, str(bad)]))
    assert "cannot read sound file" in line and "broken.wav" in line
