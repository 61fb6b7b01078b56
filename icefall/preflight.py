"""What training checks before any process starts, so that bad input is one clear line and
nothing on disk is lost: every manifest line, the exp-dir (a different run there is never
overwritten by accident), a resume that would change the data, the DDP port.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from icefall.data.manifests import check_manifest, find_manifest
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
    the first bad one is named. MUSAN's manifest must exist when --enable-musan is on."""
    for name in names:
        validate_manifest(find_manifest(params["manifest_dir"], name),
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
    """Raises OSError naming --master-port when another process listens on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise OSError(f"--master-port {port} is already in use; choose another "
                              "port") from e
            raise
