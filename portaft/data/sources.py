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


RAW = "__json__"  # the one column of a file datasets could not type: each record as JSON text


def records_of(batch: dict[str, list]) -> list[dict]:
    """A datasets batch as a list of records (decoding RAW rows)."""
    if RAW in batch:
        return [json.loads(text) for text in batch[RAW]]
    size = len(next(iter(batch.values())))
    return [{key: values[i] for key, values in batch.items()} for i in range(size)]


@dataclass
class SourceFile:
    path: Path
    rows: Any  # datasets.Dataset of the readable records; None when there are none
    bad_lines: list[str] = field(default_factory=list)  # located messages for unreadable lines
    _positions: list[int] | None = None  # line (JSONL) or sample number (JSON array) of each row

    @functools.cached_property
    def is_jsonl(self) -> bool:
        return self.path.suffix.lower() == ".jsonl" or (
            self.path.suffix.lower() == ".json" and not _starts_with_bracket(self.path))

    def first_record(self) -> dict:
        return records_of(self.rows[:1])[0]

    def where(self, row: int) -> str:
        """'file:LINE' for JSONL, 'file: sample N' for JSON arrays, 'file: row N' for tables."""
        if self.is_jsonl:
            if self._positions is None:
                self._positions = _record_lines(self.path)
            return f"{self.path}:{self._positions[row]}"
        kind = "sample" if self.path.suffix.lower() == ".json" else "row"
        return f"{self.path}: {kind} {self._positions[row] if self._positions else row + 1}"


def read_file(path: Path) -> SourceFile:
    """Read with datasets; where datasets cannot (a broken line, fields whose type changes
    from record to record), read the records with Python's json and keep each as JSON
    text in one column, so every datasets version reads every record the same way."""
    from datasets import load_dataset

    builder = BUILDERS[path.suffix.lower()]
    try:
        with quiet_datasets():
            return SourceFile(path, load_dataset(builder, data_files=str(path), split="train"))
    except Exception as exc:  # datasets wraps parser errors in several types
        if builder != "json":
            reason = str(exc.__cause__ or exc).rstrip(".")
            raise UserError(f"{path}: cannot be read as {builder}: {reason}. Fix or re-export the file.") from None
    if _starts_with_bracket(path):
        return _read_json_array(path)
    return _read_jsonl_line_by_line(path)


def _read_json_array(path: Path) -> SourceFile:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}). "
                        "A broken JSON array cannot be skipped around: fix the file.") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc}). Re-save it as UTF-8.") from None
    good, numbers, bad = [], [], []
    for number, value in enumerate(values if isinstance(values, list) else [values], start=1):
        if isinstance(value, dict):
            good.append(json.dumps(value, ensure_ascii=False))
            numbers.append(number)
        else:
            bad.append(f"{path}: sample {number}: a JSON {type(value).__name__}, not an object with the sample's fields.")
    return SourceFile(path, _raw_rows(good), bad_lines=bad, _positions=numbers)


def _read_jsonl_line_by_line(path: Path) -> SourceFile:
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
            good.append(line.rstrip("\r\n"))
            good_lines.append(number)
    return SourceFile(path, _raw_rows(good), bad_lines=bad, _positions=good_lines)


def _raw_rows(texts: list[str]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({RAW: texts}) if texts else None


def _starts_with_bracket(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _record_lines(path: Path) -> list[int]:
    """Line numbers of the non-blank lines: datasets skips blank lines in JSONL."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        return [number for number, line in enumerate(handle, start=1) if line.strip()]
