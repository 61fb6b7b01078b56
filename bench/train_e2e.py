#!/usr/bin/env python3
"""End-to-end training speed: the demo's train.py, this tree against a baseline commit.

Usage:
  python bench/train_e2e.py --baseline 930731e            # 2 rounds, 2 threads
  python bench/train_e2e.py --baseline HEAD~1 --rounds 3 --num-cuts 400 --write 0

Runs egs/librispeech/ASR/zipformer/train.py exactly as egs/synth/ASR/run.sh's stage 1
does (the demo's 2.0M-parameter model and flags), for one epoch over the first
--num-cuts utterances of the demo's domain A, once from this working tree and once from
a temporary git worktree of --baseline, alternating trees for --rounds rounds so that a
slow spell of the shared machine hits both. Needs the demo's prepared corpus
(egs/synth/ASR/data: `make demo`, or egs/synth/ASR/prepare.sh).

Figures per tree: seconds per training batch (median over rounds, from the log's
timestamps between the first and the last progress line, so start-up is left out), and
the whole process's wall time (start-up, validation and checkpoints included).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402

DEMO = ROOT / "egs" / "synth" / "ASR"
TRAIN = Path("egs") / "librispeech" / "ASR" / "zipformer" / "train.py"
# egs/synth/ASR/run.sh's model_flags and train_flags (stage 1), one epoch
DEMO_FLAGS = """--num-encoder-layers 2,2 --downsampling-factor 1,2 --encoder-dim 96,128
  --feedforward-dim 256,384 --num-heads 4,4 --encoder-unmasked-dim 64,96
  --cnn-module-kernel 15,15 --query-head-dim 16 --value-head-dim 8 --pos-dim 32
  --decoder-dim 128 --joiner-dim 128 --use-ctc 1 --feature-dim 40
  --lr-batches 500 --lr-epochs 10 --lr-warmup-batches 50 --ref-duration 0.25
  --warm-step 100 --ctc-loss-scale 0.5 --am-scale 0.2 --enable-spec-aug 0
  --enable-musan 0 --num-workers 0 --tensorboard 0 --log-interval 20
  --valid-interval 100000 --save-every-n 100000 --num-epochs 1 --base-lr 0.05
  --max-duration 15 --num-buckets 10 --seed 42 --overwrite 1""".split()
PROGRESS = re.compile(r"^(\S+ \S+) INFO .*Epoch 1, batch (\d+), loss")


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="Commit to compare with (git rev).")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--num-cuts", type=int, default=600,
                   help="Training utterances of domain A (the demo trains on 3000).")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", type=int, default=1, help="1: write docs/benchmarks.md.")
    return p.parse_args()


def _absolute(entry: dict, key: str) -> None:
    """entry[key], a path relative to egs/synth/ASR, made absolute."""
    if not Path(entry[key]).is_absolute():
        entry[key] = str((DEMO / entry[key]).resolve())


def subset_manifests(work: Path, num_cuts: int) -> Path:
    """A manifest dir with the first num_cuts training cuts of domain A and 20 dev cuts;
    feature and audio paths made absolute so that any working directory reads them."""
    fbank = DEMO / "data" / "fbank"
    out = work / "fbank"
    out.mkdir()
    for name, count in (("synth_a_cuts_train", num_cuts), ("synth_a_cuts_dev", 20)):
        src = fbank / f"{name}.jsonl.gz"
        if not src.is_file():
            raise SystemExit(f"bench/train_e2e.py: {src} is missing: prepare the demo's "
                             "corpus first (make demo, or egs/synth/ASR/prepare.sh)")
        with gzip.open(src, "rt") as f:
            cuts = [json.loads(line) for _, line in zip(range(count), f)]
        for cut in cuts:
            _absolute(cut["features"], "storage_path")
            for source in cut.get("recording", {}).get("sources", []):
                _absolute(source, "source")
        with gzip.open(out / f"{name}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(c) + "\n" for c in cuts)
    return out


def run_once(tree: Path, manifests: Path, exp_dir: Path, threads: int) -> dict:
    """train.py of ``tree`` for one epoch: seconds per batch and wall seconds."""
    cmd = [sys.executable, str(tree / TRAIN), "--exp-dir", str(exp_dir),
           "--manifest-dir", str(manifests),
           "--bpe-model", str(DEMO / "data" / "lang_bpe_200" / "bpe.model"),
           "--train-cuts", "synth_a_cuts_train.jsonl.gz",
           "--valid-cuts", "synth_a_cuts_dev.jsonl.gz", *DEMO_FLAGS]
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"bench/train_e2e.py: train.py of {tree} failed:\n{out.stderr[-3000:]}")
    marks = [(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), int(m.group(2)))
             for m in map(PROGRESS.match, out.stderr.splitlines()) if m]
    if len(marks) < 3:
        raise SystemExit("bench/train_e2e.py: fewer than 3 progress lines; raise --num-cuts")
    (t0, b0), (t1, b1) = marks[1], marks[-1]  # from batch 20: the first steps warm up
    return {"s_per_batch": (t1 - t0).total_seconds() / (b1 - b0), "wall": wall,
            "batches": b1 - b0}


def add_worktree(rev: str, path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
                   check=True, capture_output=True)


def measure(args: argparse.Namespace, work: Path) -> dict[str, list[dict]]:
    manifests = subset_manifests(work, args.num_cuts)
    trees = {"baseline": work / "baseline", "this tree": ROOT}
    add_worktree(args.baseline, trees["baseline"])
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    try:
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                res = run_once(trees[name], manifests, work / f"exp-{r}-{name[0]}",
                               args.threads)
                print(f"round {r + 1} {name}: {res['s_per_batch']:.3f} s/batch, "
                      f"{res['wall']:.1f} s wall", flush=True)
                runs[name].append(res)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                        str(trees["baseline"])], capture_output=True)
    return runs


def report(args: argparse.Namespace, runs: dict[str, list[dict]], base_rev: str) -> str:
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("s_per_batch", "wall")}
           for n, rs in runs.items()}
    rows = [f"| {n} | {m['s_per_batch']:.3f} | {m['wall']:.1f} | "
            f"{m['s_per_batch'] / med['baseline']['s_per_batch']:.2f}x |"
            for n, m in med.items()]
    return "\n".join([
        f"egs/librispeech/ASR/zipformer/train.py with egs/synth/ASR/run.sh's stage-1 flags, "
        f"one epoch over {args.num_cuts} utterances of domain A "
        f"({runs['baseline'][0]['batches']} timed batches), {args.threads} threads; "
        f"baseline {base_rev}; median of {args.rounds} alternating rounds.", "",
        "| tree | s per batch | wall s | time per batch vs baseline |",
        "|---|---|---|---|", *rows])


def main() -> None:
    args = get_args()
    base_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline],
                              check=True, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="train_e2e_") as tmp:
        runs = measure(args, Path(tmp))
    body = report(args, runs, base_rev)
    print(body)
    if args.write:
        cmd = "python bench/train_e2e.py" + "".join(f" {a}" for a in sys.argv[1:])
        write_section("train_e2e", "Training end to end (CPU, bench/train_e2e.py)", cmd, body)


if __name__ == "__main__":
    main()
