"""The CPU allocator setting keeps freed memory: after a step-like pattern of large
tensors the process keeps the memory, and the next step faults fewer pages in (resident
size and page faults as the kernel counts them, in fresh processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, resource, sys
import torch
from icefall.cpu_allocator import keep_freed_cpu_memory
applied = keep_freed_cpu_memory() if sys.argv[1] == "1" else False
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
def step():  # a training step's pattern: many 4 MB tensors alive at once, then freed
    tensors = [torch.ones(1 << 20) for _ in range(20)]
    del tensors
base = rss_mb()
step()
kept_mb = rss_mb() - base
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "kept_mb": kept_mb, "faults": faults}))
"""


def _probe(apply: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE, "1" if apply else "0"], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    default, kept = _probe(False), _probe(True)
    assert kept["applied"] and not default["applied"]
    # the step's 80 MB go back to the kernel by default, and stay with the setting
    assert default["kept_mb"] < 20 < 60 < kept["kept_mb"]
    # by default the next step faults all 20k pages in again
    assert default["faults"] > 15_000
    assert kept["faults"] < 0.6 * default["faults"]


def test_user_settings_are_left_alone(monkeypatch):
    from icefall.cpu_allocator import keep_freed_cpu_memory

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert keep_freed_cpu_memory() is False
