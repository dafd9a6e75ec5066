"""Finding and reading the files of a data source, and naming where each record came from.

A source's `path` is a file, a directory (every supported file under it) or a glob.
Each file is read on its own with `datasets` (cached by datasets as usual), so a
record's file and line (JSONL) or row (JSON array, parquet, CSV) are always known.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portaft.errors import UserError

BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@contextlib.contextmanager
def quiet_datasets():
    """No progress bar and no logged parser error while datasets reads a file: portaft
    reports a file it cannot read itself, with the line."""
    import logging

    from datasets.utils import logging as datasets_logging

    level = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(logging.CRITICAL)
    try:
        with progress_bars(False):
            yield
    finally:
        datasets_logging.set_verbosity(level)


@contextlib.contextmanager
def progress_bars(shown: bool):
    """datasets' progress bars on or off for a block, restored afterwards."""
    from datasets.utils import disable_progress_bars, enable_progress_bars, are_progress_bars_disabled

    was_disabled = are_progress_bars_disabled()
    (enable_progress_bars if shown else disable_progress_bars)()
    try:
        yield
    finally:
        (disable_progress_bars if was_disabled else enable_progress_bars)()


def source_files(path: str) -> list[Path]:
    """The files a source path names; UserError when it names none portaft can read."""
    if any(ch in path for ch in "*?["):
        files = [Path(p) for p in sorted(glob.glob(path, recursive=True)) if Path(p).is_file()]
        where = f"the glob {path!r} matches"
    elif Path(path).is_dir():
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        where = f"the folder {path} holds"
    elif Path(path).is_file():
        files = [Path(path)]
        where = f"{path} is"
    else:
        raise UserError(f"file not found: {path} (relative paths start at {Path.cwd()}).")
    readable = [f for f in files if f.suffix.lower() in BUILDERS]
    if not readable:
        raise UserError(
            f"{where} no file portaft reads ({', '.join(BUILDERS)}). Convert the data or fix the path."
        )
    return readable


@dataclass
class SourceFile:
    path: Path
    rows: Any  # datasets.Dataset of the readable records; None when there are none
    bad_lines: list[str] = field(default_factory=list)  # located messages for unreadable lines
    _lines: list[int] | None = None  # JSONL: the line number of each row

    @functools.cached_property
    def is_jsonl(self) -> bool:
        return self.path.suffix.lower() == ".jsonl" or (
            self.path.suffix.lower() == ".json" and not _starts_with_bracket(self.path))

    def where(self, row: int) -> str:
        """'file:LINE' for JSONL, 'file: sample N' for JSON arrays, 'file: row N' for tables."""
        if self.is_jsonl:
            if self._lines is None:
                self._lines = _record_lines(self.path)
            return f"{self.path}:{self._lines[row]}"
        kind = "sample" if self.path.suffix.lower() == ".json" else "row"
        return f"{self.path}: {kind} {row + 1}"


def read_file(path: Path) -> SourceFile:
    from datasets import load_dataset

    builder = BUILDERS[path.suffix.lower()]
    try:
        with quiet_datasets():
            return SourceFile(path, load_dataset(builder, data_files=str(path), split="train"))
    except Exception as exc:  # datasets wraps parser errors in several types
        cause = exc.__cause__ or exc
        if builder != "json":
            reason = str(cause).rstrip(".")
            raise UserError(f"{path}: cannot be read as {builder}: {reason}. Fix or re-export the file.") from None
    if _starts_with_bracket(path):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}). "
                            "A broken JSON array cannot be skipped around: fix the file.") from None
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: not UTF-8 text ({exc}). Re-save it as UTF-8.") from None
        raise UserError(f"{path}: a JSON array that datasets cannot read ({cause}). Write it as JSONL instead.")
    return _read_jsonl_around_bad_lines(path)


def _read_jsonl_around_bad_lines(path: Path) -> SourceFile:
    """datasets refused the file: find every bad line, then read the good ones, so that
    the records' own problems are found in the same pass."""
    from datasets import load_dataset

    good, good_lines, bad = [], [], []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                bad.append(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno}).")
                continue
            if not isinstance(value, dict):
                bad.append(f"{path}:{number}: a JSON {type(value).__name__}, not an object with the sample's fields.")
                continue
            good.append(line if line.endswith("\n") else line + "\n")
            good_lines.append(number)
    if not good:
        return SourceFile(path, None, bad_lines=bad)  # blank or bad lines only
    if not bad:
        raise UserError(f"{path}: datasets cannot read this file although every line is JSON; "
                        "check that each line's fields have consistent types.")
    with tempfile.TemporaryDirectory(prefix="portaft-") as folder:
        clean = Path(folder) / "good.jsonl"
        clean.write_text("".join(good), encoding="utf-8")
        with quiet_datasets():
            rows = load_dataset("json", data_files=str(clean), split="train", cache_dir=folder, keep_in_memory=True)
    return SourceFile(path, rows, bad_lines=bad, _lines=good_lines)


def _starts_with_bracket(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _record_lines(path: Path) -> list[int]:
    """Line numbers of the non-blank lines: datasets skips blank lines in JSONL."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        return [number for number, line in enumerate(handle, start=1) if line.strip()]
