"""A training step reads the device once: the invariant behind "training steps synchronise
the device at most once per step" (issue 12), checked on the CPU with test/sync_probe.py.

Every host read of a tensor made during a step must be either the step's one read
(``train_step``) or one of the reads of host tensors by design listed here.
"""

from __future__ import annotations

import pytest
from runs import BASE, train_args
from sync_probe import SyncProbe

import icefall.trainer as trainer
from icefall.cli.train import main as train_main

# Reads of CPU tensors by design: lengths and boundaries are kept on the host.
HOST_READS = {
    ("mutual_information", "check_boundary"),  # boundary values, checked on its CPU copy
    ("mutual_information", "host_copy"),  # the CPU copy itself (free for a CPU boundary)
    ("mutual_information", "_start_and_end_diagonals"),  # where the recursions start and end
    ("rnnt_loss", "_smallest_prune_range"),  # the s_range every utterance needs
    ("model", "forward"),  # x_lens.cpu(): training passes CPU lengths
    ("model", "check_inputs"),  # lengths, on the host
    ("trainer", "loss_terms"),  # frame count from the CPU lengths
}
# Not every step: ScaledAdam's clipping threshold (steps 10, 20, 40, then every 100).
PERIODIC = {("optim", "_update_clipping_threshold")}


def _probe_training(corpus, tmp_path, monkeypatch, *flags: str) -> tuple[SyncProbe, int]:
    probe = SyncProbe()
    steps = []
    original = trainer.train_step

    def probed_step(params, st, batch):
        probe.active = True
        try:
            return original(params, st, batch)
        finally:
            probe.active = False
            steps.append(params.batch_idx_train)

    monkeypatch.setattr(trainer, "train_step", probed_step)
    args = train_args(corpus, tmp_path / "exp", "a", 1, "--log-interval", "1000",
                      "--average-period", "1000", "--save-every-n", "0",
                      "--valid-interval", "100000", *flags)
    with probe.installed():
        train_main(BASE.train, args)
    return probe, len(steps)


@pytest.mark.parametrize("flags, min_steps", [
    ((), 20),  # past ScaledAdam's first clipping-threshold updates
    (("--use-ctc", "1", "--use-bf16", "1", "--train-cuts", "doma_cuts_valid.jsonl.gz",
      "--drop-last", "0"), 2),  # bfloat16 is slow on CPUs: a few steps
], ids=["transducer", "transducer+ctc-bf16"])
def test_a_training_step_reads_the_device_once(corpus, tmp_path, monkeypatch, flags,
                                               min_steps):
    probe, steps = _probe_training(corpus, tmp_path, monkeypatch, *flags)
    assert steps >= min_steps
    reads = {k: n for k, n in probe.counts.items() if (k[1], k[2]) not in HOST_READS | PERIODIC}
    step_reads = reads.pop(("tolist", "trainer", "train_step"), 0)
    assert reads == {}, f"reads of device tensors outside the step's one read: {reads}"
    assert step_reads == steps
