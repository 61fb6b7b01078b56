"""Writing files without ever losing or half-writing what is on disk.

Every file the project writes goes through :func:`atomic_write`: the content is written to
a temporary file in the target's folder, created exclusively (``O_CREAT | O_EXCL``: an
existing file or symbolic link of that name is never opened) under an unpredictable name
``.<pid>.<random>.tmp.<name>`` (the target's suffixes kept, for writers that go by them),
then renamed over the target. A crash (or kill -9) leaves at
most a temporary file, which :func:`remove_stale_temporaries` removes on a later run; the
target keeps its previous content until the rename. A full disk gives one line naming the
file (``no space left on device: PATH``), and the temporary file is removed.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_TEMPORARY = re.compile(r"^\.(\d+)\.[A-Za-z0-9_]{8}\.tmp\..+$")
STALE_AFTER_SECONDS = 3600.0  # a temporary this old is stale, whoever wrote it
ORPHAN_AFTER_SECONDS = 60.0  # ... or this old when its writer is no longer running here


def temporary_path(target: str | Path) -> Path:
    """A new, empty file beside ``target`` (exclusive creation, unpredictable name)."""
    target = Path(target)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{os.getpid()}.",
                                suffix=f".tmp.{target.name}")
    os.close(fd)
    return Path(name)


def _explain(error: OSError, target: Path) -> OSError:
    if error.errno == errno.ENOSPC:
        return OSError(f"no space left on device: {target}")
    return error


def atomic_write(target: str | Path, write: Callable[[Path], object]) -> Path:
    """Calls ``write(tmp)`` on a temporary file, then renames it to ``target``.

    Raises:
      OSError: the write failed (``no space left on device: PATH`` for a full disk); the
        temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    tmp = temporary_path(target)
    try:
        write(tmp)
        os.replace(tmp, target)
    except OSError as e:
        raise _explain(e, target) from e
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
    return target


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through an exclusive temporary file and a rename."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copies ``src`` to ``dst`` through a temporary file and a rename."""
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


class StagedFiles:
    """Files written together and published together.

    ``stage(target)`` gives a temporary path to write ``target``'s content to; leaving the
    ``with`` block renames every one of them to its target, only if all were written and
    no exception was raised; otherwise every temporary is removed and no target changes.
    A full disk gives ``no space left on device: PATH``.
    """

    def __init__(self) -> None:
        self.pairs: list[tuple[Path, Path]] = []

    def stage(self, target: str | Path) -> Path:
        target = Path(target)
        tmp = temporary_path(target)
        self.pairs.append((tmp, target))
        return tmp

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, kind, error, _tb) -> None:
        try:
            if error is None:
                for tmp, target in self.pairs:
                    if not tmp.is_file() or tmp.stat().st_size == 0:
                        raise OSError(f"not written: {target}")
                for tmp, target in self.pairs:
                    os.replace(tmp, target)
        finally:
            for tmp, _ in self.pairs:
                if tmp.exists() or tmp.is_symlink():
                    tmp.unlink()
        if isinstance(error, OSError) and self.pairs:
            raise _explain(error, self.pairs[0][1].parent) from error


def _running_here(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Removes this project's temporary files left in ``folder`` by a crashed run: those
    older than an hour, or older than a minute whose writer no longer runs on this machine.
    Temporaries of a run still writing are left alone. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, now = [], time.time()
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match is None or not (entry.is_file() or entry.is_symlink()):
            continue
        age = now - entry.lstat().st_mtime
        if age > STALE_AFTER_SECONDS or (age > ORPHAN_AFTER_SECONDS and
                                         not _running_here(int(match.group(1)))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    if removed:
        logging.info(f"Removed {len(removed)} stale temporary file(s) from {folder}")
    return removed
