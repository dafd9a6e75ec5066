"""Whether this Python compiles the libraries from source at every launch (issue 28).

Where PYTHONDONTWRITEBYTECODE is set (many container images set it) and the installed
.pyc files are missing or stale (copied without their sources' times, or made for another
Python), every process compiles transformers, peft and torch again: 10.9 s of each
`portaft run` on one H100 machine (bench/results/seed-recipe-2026-12-07-c/). `portaft
doctor` reports it, and `portaft run` says it in one line; nothing here changes how Python
imports.
"""

from __future__ import annotations

import os
import re
import sys
from importlib.util import MAGIC_NUMBER
from types import ModuleType
from typing import Mapping

LIBRARIES = re.compile(r"[/\\](site|dist)-packages[/\\]")
STALE_ENOUGH = 200  # modules compiled at every launch before it is worth a line (~0.5 s on a fast CPU)


def stale_modules(modules: Mapping[str, ModuleType]) -> tuple[int, int]:
    """(installed modules read from .py files, those of them whose bytecode file is missing or
    does not match its source), as importlib decides it (PEP 552: a timestamp .pyc matches
    on the source's mtime and size; a hash-based one is taken as matching). Only the
    libraries count, those under site-packages: a checkout being edited (portaft's own in
    development, a project's tests) compiles its changed files at any launch anyway."""
    checked = stale = 0
    for module in list(modules.values()):
        source, cached = getattr(module, "__file__", None), getattr(module, "__cached__", None)
        if not isinstance(source, str) or not isinstance(cached, str) or not source.endswith(".py"):
            continue
        if not LIBRARIES.search(source):
            continue
        checked += 1
        try:
            with open(cached, "rb") as file:
                header = file.read(16)
            status = os.stat(source)
        except OSError:
            stale += 1
            continue
        if header[:4] != MAGIC_NUMBER or len(header) < 16:
            stale += 1
        elif not int.from_bytes(header[4:8], "little") & 1 and (
                int.from_bytes(header[8:12], "little") != int(status.st_mtime) & 0xFFFFFFFF
                or int.from_bytes(header[12:16], "little") != status.st_size & 0xFFFFFFFF):
            stale += 1
    return checked, stale


def bytecode_findings(modules: Mapping[str, ModuleType], dont_write: bool, prefix: str | None) -> list[dict]:
    """A finding (what, fix) where Python compiled many modules from source in this process
    and may not keep what it compiled."""
    if not dont_write:
        return []  # a Python that may write bytecode keeps it after the first launch: nothing read
    checked, stale = stale_modules(modules)
    if stale < STALE_ENOUGH:
        return []
    return [{"what": ("Python may not write bytecode here (PYTHONDONTWRITEBYTECODE is set"
                      f"{f', PYTHONPYCACHEPREFIX={prefix}' if prefix else ''}) "
                      f"and {stale} of the {checked} library modules imported have no valid .pyc: every launch "
                      "compiles them again (10.9 s of each `portaft run` on one H100 machine)"),
             "fix": ("keep the compiled files outside the install: export PYTHONPYCACHEPREFIX=~/.cache/pycache "
                     "and unset PYTHONDONTWRITEBYTECODE (or run `python -m compileall -q` over site-packages "
                     "once, as whoever installed it)")}]


def recompiling() -> str | None:
    """The line `portaft run` prints where this process compiled the libraries and may not keep
    them, else None."""
    found = bytecode_findings(sys.modules, sys.dont_write_bytecode, sys.pycache_prefix)
    return f"{found[0]['what']}; to start faster: {found[0]['fix']}" if found else None
