"""What training checks before any process starts, so that bad input is one clear line and
nothing on disk is lost: every manifest line, the exp-dir (a different run there is never
overwritten by accident), a resume that would change the data, the DDP port; and what it
tells about the data: the share of ``<unk>`` tokens in the training transcripts (stopping
above --max-unk-share) and whether the schedule's warm-ups fit the run's length.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from icefall.data.fbank import NUM_MEL_BINS
from icefall.data.manifests import check_manifest, feature_width, find_manifest, load_cuts
from icefall.data.tokenizer import UnkStats, check_unk_share, unk_stats
from icefall.data.validation import validate_manifest

# Flags that decide which batches a run sees: a mid-epoch resume that changes them would
# continue with a sampler position that no longer means the same batches.
DATA_FLAGS = ("train_cuts", "mux_cuts", "use_mux", "mux_weights", "manifest_dir",
              "max_duration", "bucketing_sampler", "num_buckets", "shuffle", "drop_last",
              "world_size", "seed", "concatenate_cuts")
RUN_FILES = ("epoch-*.pt", "checkpoint-*.pt", "best-*.pt", "bad-model*.pt")


def check_training_manifests(params: Mapping[str, Any], names: list[str]) -> None:
    """Every cut of every manifest named in ``names`` (file names in --manifest-dir, ``a|b``
    for alternatives) parses, is usable for training and has its feature or audio files;
    the first bad one is named. MUSAN's manifest must exist when --enable-musan is on, its
    features as wide as the model's input."""
    width = int(params.get("feature_dim", NUM_MEL_BINS))
    for name in names:
        validate_manifest(find_manifest(params["manifest_dir"], name), num_mel_bins=width,
                          require_supervisions=True,
                          need_features=not params["on_the_fly_feats"],
                          trust_sources=params["trust_manifest"])
    if params["enable_musan"]:
        musan = Path(params["manifest_dir"]) / "musan_cuts.jsonl.gz"
        try:
            check_manifest(musan)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"--enable-musan 1 needs {musan} (prepare MUSAN, or pass "
                                    "--enable-musan 0)") from e
        if params["on_the_fly_feats"]:
            return  # features made from the audio: MUSAN's stored width does not matter
        musan_width = feature_width(load_cuts(musan))
        if musan_width not in (None, width):
            raise ValueError(f"{musan} has {musan_width}-bin features but the model takes "
                             f"{width} (--feature-dim): compute MUSAN's with --num-mel-bins "
                             f"{width}, or pass --enable-musan 0")


def other_run_files(exp_dir: Path) -> list[Path]:
    """Checkpoints of a training run in ``exp_dir``."""
    return sorted({f for pattern in RUN_FILES for f in exp_dir.glob(pattern)})


def check_exp_dir(params: Mapping[str, Any], resuming: bool) -> None:
    """Refuses to start a new run in an exp-dir that holds another run's checkpoints (their
    epoch-N.pt would be overwritten and --avg would average two runs), unless resuming or
    ``--overwrite 1``, which removes them first."""
    exp_dir = Path(params["exp_dir"])
    found = other_run_files(exp_dir)
    if not found or resuming:
        return
    if not params["overwrite"]:
        names = ", ".join(f.name for f in found[:3]) + (", ..." if len(found) > 3 else "")
        raise ValueError(f"--exp-dir {exp_dir} already holds a training run ({names}): resume "
                         "it with --start-epoch/--start-batch, choose another --exp-dir, or "
                         "pass --overwrite 1 to delete it and start again")
    for f in found:
        f.unlink()
    logging.warning(f"--overwrite 1: removed {len(found)} checkpoint files of the earlier run "
                    f"in {exp_dir}")


def check_resume_data(params: Mapping[str, Any], saved: Mapping[str, Any], filename: Path,
                      mid_epoch: bool) -> None:
    """A resumed run must see the data the checkpoint's run saw. Mid-epoch (the sampler's
    position is restored) a changed data flag is an error; at an epoch boundary, a warning."""
    changed = [k for k in DATA_FLAGS if k in saved and k in params
               and str(saved[k]) != str(params[k])]
    if not changed:
        return
    what = "; ".join(f"--{k.replace('_', '-')} {saved[k]} -> {params[k]}" for k in changed)
    if mid_epoch:
        raise ValueError(f"resuming mid-epoch from {filename} with other data flags ({what}): "
                         "the sampler would continue at a position of other batches; use the "
                         "flags of that run, or resume from an epoch-N.pt")
    logging.warning(f"Resuming from {filename} with changed data flags: {what}")


def check_port_free(port: int) -> None:
    """Raises OSError naming --master-port when another process listens on it.

    SO_REUSEADDR, as the process group's own store sets it: connections of a run that
    just ended (TIME_WAIT, about a minute) do not count, a listening socket does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise OSError(f"--master-port {port} is already in use; choose another "
                              "port") from e
            raise


def training_data_stats(params: Mapping[str, Any], sp) -> tuple[float, UnkStats]:
    """(seconds of audio, ``<unk>`` counts) of the --train-cuts manifests, read once."""
    seconds = [0.0]

    def texts() -> Iterator[tuple[str, str]]:  # streamed: a large corpus is never held
        for name in (n.strip() for n in params["train_cuts"].split(",") if n.strip()):
            for cut in load_cuts(Path(params["manifest_dir"]) / name):
                seconds[0] += cut.duration
                yield from ((cut.id, s.text or "") for s in cut.supervisions)

    stats = unk_stats(sp, texts())
    return seconds[0], stats


def check_unk(params: Mapping[str, Any], stats: UnkStats) -> None:
    """Raises ValueError (naming the first offending utterances) when more than
    --max-unk-share of the training transcripts' BPE tokens are ``<unk>``."""
    check_unk_share(stats, params["max_unk_share"], f"--train-cuts {params['train_cuts']}")


def log_unk(params: Mapping[str, Any], stats: UnkStats) -> None:
    """Logs the share of ``<unk>`` tokens in the training transcripts."""
    logging.info(stats.describe(f"--train-cuts {params['train_cuts']}"))


def planned_batches(params: Mapping[str, Any], seconds: float) -> int:
    """About how many batches the whole run has: each epoch's audio in batches of
    --max-duration seconds on each of --world-size ranks (the sampler's partly filled
    batches make a few more)."""
    per_epoch = math.ceil(seconds / (params["max_duration"] * params["world_size"]))
    return max(1, per_epoch) * params["num_epochs"]


def fit_schedule(params: MutableMapping[str, Any], seconds: float) -> None:
    """Makes a short run leave its warm-ups: with --scale-schedule 1, --lr-warmup-batches
    and --warm-step are lowered to a tenth and a quarter of the run's batches; otherwise a
    run that would end inside them gets a warning naming the flags and the batch count."""
    total = planned_batches(params, seconds)
    limits = {"lr_warmup_batches": max(1, total // 10), "warm_step": max(1, total // 4)}
    if params.get("scale_schedule"):
        for key, limit in limits.items():
            if params[key] > limit:
                logging.info(f"--scale-schedule 1: --{key.replace('_', '-')} {params[key]:g} "
                             f"-> {limit} (the run has about {total} batches)")
                params[key] = type(params[key])(limit)
        return
    long = [f"--{k.replace('_', '-')} {params[k]:g}" for k in limits if params[k] >= total]
    if long:
        logging.warning(f"The run has about {total} batches ({seconds / 3600:.2f} h of audio, "
                        f"--num-epochs {params['num_epochs']}, --max-duration "
                        f"{params['max_duration']:g}), no more than {' and '.join(long)}: it "
                        "would end in warm-up (learning rate below its full value, pruned loss "
                        "not at full weight). Lower those flags, or pass --scale-schedule 1")
