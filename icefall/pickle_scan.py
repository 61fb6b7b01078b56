"""What a pickled checkpoint would import, read without unpickling it.

``torch.load(..., weights_only=True)`` refuses any checkpoint that stores Python objects;
loading one anyway (``--trust-checkpoint 1``) runs whatever its pickle imports. Before a
user is offered that choice, :func:`pickle_globals` lists those imports from the pickle's
opcodes, and :func:`dangerous_globals` picks the ones no checkpoint ever needs: process,
file-system, network and evaluation functions.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

# Modules whose functions can run commands, touch files or sockets, or evaluate code.
_DANGEROUS_MODULES = (
    "os", "posix", "nt", "subprocess", "shutil", "socket", "sys", "importlib", "runpy", "pty",
    "code", "codeop", "ctypes", "multiprocessing", "asyncio", "webbrowser", "urllib", "http",
    "ftplib", "smtplib", "telnetlib", "pickle", "_pickle", "marshal", "shelve", "tempfile",
    "pathlib", "io", "_io", "glob", "signal", "threading", "_thread", "platform", "pdb",
)
# Built-ins that evaluate code, open files or reach any attribute.
_DANGEROUS_BUILTINS = ("eval", "exec", "compile", "__import__", "open", "getattr", "setattr",
                       "delattr", "globals", "locals", "vars", "input", "breakpoint", "apply")
# pathlib's path classes are plain data in icefall's params (a saved --exp-dir).
_HARMLESS = ("pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.Path", "pathlib.PurePath",
             "pathlib.PurePosixPath", "pathlib.PureWindowsPath")


def _pickle_bytes(path: Path) -> bytes:
    """The main pickle of a torch zip checkpoint (``<archive>/data.pkl``), or the file."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            if name is not None:
                return z.read(name)
    return path.read_bytes()


def pickle_globals(path: str | Path) -> list[str]:
    """``module.name`` of every global the pickle of ``path`` imports, in order, once each.

    Reads opcodes only (never executes them); a truncated pickle yields what precedes the
    break.
    """
    found: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(_pickle_bytes(Path(path))):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings = (strings + [str(arg)])[-2:]
            elif opcode.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) == 2:
                found.append(f"{strings[0]}.{strings[1]}")
    except (ValueError, EOFError, KeyError, zipfile.BadZipFile):
        pass
    return list(dict.fromkeys(found))


def dangerous_globals(names: list[str]) -> list[str]:
    """The names among ``names`` that could run commands, touch files or evaluate code."""
    out = []
    for name in names:
        module, _, attr = name.rpartition(".")
        top = module.split(".")[0]
        if name in _HARMLESS:
            continue
        if top in _DANGEROUS_MODULES or (top in ("builtins", "__builtin__") and
                                         attr in _DANGEROUS_BUILTINS):
            out.append(name)
    return out


def untrusted_globals(names: list[str]) -> list[str]:
    """The globals that ``weights_only`` loading refuses (all but torch's own and
    collections.OrderedDict)."""
    return [n for n in names if not n.startswith("torch.") and n != "collections.OrderedDict"
            and not n.startswith("_codecs.")]
