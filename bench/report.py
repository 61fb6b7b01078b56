"""Writes one benchmark's figures into its own section of docs/benchmarks.md.

Each benchmark owns the section between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->``; re-running it replaces that section only, atomically.
"""

from __future__ import annotations

import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Figures written by the scripts under `bench/`; each section names the command that\n"
    "produced it. Ratios are measured side by side in one run, since the machines are\n"
    "shared and absolute times are noisy.\n"
)

sys.path.insert(0, str(ROOT))
from icefall.files import atomic_write_text  # noqa: E402


def machine_line() -> str:
    """One line describing where the figures were taken."""
    dev = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
           else f"CPU, {torch.get_num_threads()} threads")
    return (f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} {dev}, "
            f"torch {torch.__version__}, Python {platform.python_version()}.")


def write_section(name: str, title: str, command: str, body: str) -> None:
    """Replaces (or appends) the section ``name`` of docs/benchmarks.md."""
    section = (f"<!-- bench:{name} -->\n## {title}\n\nCommand: `{command}`\n\n"
               f"{machine_line()}\n\n{body.strip()}\n<!-- /bench:{name} -->\n")
    text = DOC.read_text() if DOC.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->\n",
                         re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else \
        text.rstrip() + "\n\n" + section
    DOC.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(DOC, text)
