"""Model flags from checkpoints (icefall/model_config.py), which flags a command line gave,
the <unk> share, the schedule's fit to a short run, and resampling in pretrained.py."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TRAIN_MODEL
from custom_data import make_base_checkpoint, make_bpe

from icefall.checkpoint import CheckpointError, load_checkpoint_file
from icefall.cli.decode import DecodeRecipe, get_parser
from icefall.cli.model import given_flags
from icefall.data import load_bpe_model
from icefall.data.tokenizer import check_unk_share, unk_stats
from icefall.decode.transcribe import transcribe_files
from icefall.inference import model_from_state
from icefall.model_config import apply_model_config, infer_model_config, matching_flags
from icefall.preflight import fit_schedule
from icefall.zipformer import get_model
from icefall.zipformer.build import MODEL_DEFAULTS

INFERRED = ("num_encoder_layers", "downsampling_factor", "feedforward_dim", "encoder_dim",
            "cnn_module_kernel", "pos_dim", "decoder_dim", "joiner_dim", "context_size",
            "use_transducer", "use_ctc")


def test_given_flags_are_those_on_the_command_line():
    parser = get_parser(DecodeRecipe("exp", False, "a=b.jsonl.gz", False))
    given = given_flags(parser, ["--encoder-dim", "64,64", "--use-ctc=1", "--epoch", "3"])
    assert given == ["encoder_dim", "epoch", "use_ctc"]
    assert given_flags(parser, []) == []
    # repeatable flags (append actions) count as given once they appear
    files = ["--adapter-file", "a.pt", "--adapter-file", "b.pt"]
    assert given_flags(parser, files) == ["adapter_file"]
    assert parser.parse_args(files).adapter_file == [Path("a.pt"), Path("b.pt")]


def test_stored_values_fill_the_flags_not_given():
    stored = dict(MODEL_DEFAULTS, encoder_dim="64,64", decoder_dim=64, use_ctc=True)
    params = dict(MODEL_DEFAULTS, encoder_dim="96,96", given_flags=["encoder_dim"])
    note = apply_model_config(params, stored, ("encoder_dim", "decoder_dim", "use_ctc"),
                              "x.pt")
    assert (params["encoder_dim"], params["decoder_dim"], params["use_ctc"]) == \
        ("96,96", 64, True)
    assert note == "Model flags from x.pt: --decoder-dim 64 --use-ctc 1"
    library_call = dict(MODEL_DEFAULTS)  # no given_flags: a library caller's values stay
    assert apply_model_config(library_call, stored, ("decoder_dim",), "x.pt") is None
    assert library_call == MODEL_DEFAULTS


@pytest.mark.parametrize("cfg", [
    dict(MODEL_DEFAULTS),
    dict(MODEL_DEFAULTS, **TRAIN_MODEL, use_ctc=True, use_adapters=True, adapter_dim=8),
    {**MODEL_DEFAULTS, **TRAIN_MODEL, "context_size": 1}])
def test_shapes_give_back_the_flags(cfg):
    """The flags a model was built from, read back from its state dict's shapes."""
    with torch.device("meta"):
        state = get_model(cfg).state_dict()
    inferred = infer_model_config(state)
    assert {k: str(inferred[k]) for k in INFERRED} == {k: str(cfg[k]) for k in INFERRED}
    assert inferred.get("adapter_dim") == (cfg["adapter_dim"] if cfg["use_adapters"] else None)


def test_a_mismatch_names_the_flags_that_fit(tmp_path):
    """A checkpoint with a stored configuration names its flags; one without (icefall's
    pretrained.pt) names what its weights' shapes say."""
    bpe = make_bpe(tmp_path)
    ckpt = load_checkpoint_file(make_base_checkpoint(tmp_path / "base.pt", bpe, TRAIN_MODEL))
    params = {**MODEL_DEFAULTS, **TRAIN_MODEL, "encoder_dim": "64,80", "vocab_size": 24,
              "use_adapters": False}
    with pytest.raises(CheckpointError, match=r"has shape .* flags stored in base.pt: "
                                              r"--encoder-dim 64,64$"):
        model_from_state(params, ckpt["model"], str(tmp_path / "base.pt"),
                         stored=ckpt["params"]["model"])
    defaults = dict(MODEL_DEFAULTS, vocab_size=24, use_adapters=False)
    with pytest.raises(CheckpointError, match=r"flags inferred from the weights of "
                                              r"pretrained.pt: --num-encoder-layers 1,1 "
                                              r"--downsampling-factor 1,2 .*--joiner-dim 64"):
        model_from_state(defaults, ckpt["model"], str(tmp_path / "pretrained.pt"))
    assert "--encoder-dim 64,64" in matching_flags(defaults, ckpt["model"], None)


def test_pretrained_resamples_and_takes_the_stored_flags(tmp_path):
    """pretrained.py on an 8 kHz stereo file, with no model flag given: the same text as
    the 16 kHz mono version of it (resampled the same way), from the stored model."""
    bpe = make_bpe(tmp_path)
    base = make_base_checkpoint(tmp_path / "base.pt", bpe, TRAIN_MODEL)
    t = np.arange(16000) / 8000
    x = (0.3 * np.sin(2 * np.pi * 300 * t) * np.sin(2 * np.pi * 1.3 * t)).astype(np.float32)
    sf.write(str(tmp_path / "a8k.wav"), np.stack([x, x], 1), 8000)
    from icefall.audio import resample

    sf.write(str(tmp_path / "a16k.wav"), resample(x, 8000, 16000), 16000, subtype="FLOAT")
    params = dict(MODEL_DEFAULTS, checkpoint=base, bpe_model=bpe, method="greedy_search",
                  sample_rate=16000, beam_size=4, max_sym_per_frame=1,
                  trust_checkpoint=False, use_adapters=False, given_flags=[],
                  sound_files=[tmp_path / "a8k.wav", tmp_path / "a16k.wav"])
    with pytest.raises(CheckpointError, match="--encoder-dim 64,64"):
        transcribe_files(dict(params, given_flags=None))  # no flags taken: icefall's model
    texts = transcribe_files(params)
    assert len(texts) == 2 and texts[0] == texts[1]


def test_unk_share_counts_and_names_the_words(tmp_path):
    sp = load_bpe_model(make_bpe(tmp_path))
    ok = unk_stats(sp, [("u1", "ALPHA BRAVO"), ("u2", "ECHO")])
    assert (ok.unk, ok.utterances_with_unk) == (0, 0) and ok.tokens > 0
    check_unk_share(ok, 0.0, "set")
    bad = unk_stats(sp, [("u1", "ALPHA BRAVO"), ("u2", "ZULU 42 ECHO"), ("u3", "ECHO")])
    assert bad.utterances_with_unk == 1 and bad.offenders == [("u2", ["ZULU", "42"])]
    unk_id = sp.unk_id()
    expected = sum(i == unk_id for i in sp.encode("ZULU 42 ECHO", out_type=int))
    assert bad.unk == expected > 0
    assert bad.share == expected / bad.tokens
    with pytest.raises(ValueError, match=r"set: .* first: u2 \(ZULU 42\).* --max-unk-share 1"):
        check_unk_share(bad, 0.01, "set")
    check_unk_share(bad, 1.0, "set")


def test_a_short_run_leaves_its_warm_ups(caplog):
    """100 s of audio in 10 s batches for 3 epochs: about 30 batches. --scale-schedule 1
    lowers the warm-ups to 3 and 7 batches; without it, a warning names the flags."""
    base = {"max_duration": 10.0, "world_size": 1, "num_epochs": 3,
            "lr_warmup_batches": 500.0, "warm_step": 2000}
    scaled = dict(base, scale_schedule=True)
    fit_schedule(scaled, 100.0)
    assert (scaled["lr_warmup_batches"], scaled["warm_step"]) == (3.0, 7)
    plain = dict(base, scale_schedule=False)
    with caplog.at_level(logging.WARNING):
        fit_schedule(plain, 100.0)
    assert plain["lr_warmup_batches"] == 500.0
    assert "about 30 batches" in caplog.text and "--lr-warmup-batches 500" in caplog.text
    assert "--warm-step 2000" in caplog.text and "--scale-schedule 1" in caplog.text
    long_run = dict(base, scale_schedule=False, num_epochs=100)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fit_schedule(long_run, 1000.0)  # 10,000 batches: past both warm-ups
    assert not caplog.text


def test_stereo_file_at_another_rate_is_read_at_16k(tmp_path: Path):
    from icefall.audio import read_sound_file

    t = np.arange(22050) / 22050
    left = 0.4 * np.sin(2 * np.pi * 500 * t)
    sf.write(str(tmp_path / "s.wav"), np.stack([left, -left * 0], 1), 22050)
    y = read_sound_file(tmp_path / "s.wav")
    assert y.shape == (16000,) and y.dtype == np.float32
    assert np.argmax(np.abs(np.fft.rfft(y))) == 500
    assert abs(np.abs(y[2000:14000]).max() - 0.2) < 0.01
