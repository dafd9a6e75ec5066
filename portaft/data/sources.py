"""Finding and reading the files of a data source, and naming where each record came from.

A source's `path` is a file, a directory (every supported file under it, except
dataset_info.json, which describes data rather than being data) or a glob.
Each file is read on its own with `datasets` (cached by datasets as usual), so a
record's file and line (JSONL, JSON) or row (parquet, CSV) are always known. A .jsonl
that holds one pretty-printed JSON array or object is read as JSON, with a note.
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

from .problems import Problem

BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
NOT_DATA = {"dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json"}  # what describes data


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
    readable = [f for f in files if f.suffix.lower() in BUILDERS and (len(files) == 1 or f.name not in NOT_DATA)]
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
    bad_lines: list[Problem] = field(default_factory=list)  # unreadable lines, located
    _positions: list[int] | None = None  # line (JSONL) or sample number (JSON array) of each row
    notes: list[str] = field(default_factory=list)  # how the file was read, when not as its name says

    @functools.cached_property
    def is_jsonl(self) -> bool:
        return self.path.suffix.lower() in (".json", ".jsonl") and not _is_json_document(self.path)

    def first_record(self) -> dict:
        return records_of(self.rows[:1])[0]

    def where(self, row: int) -> str:
        """'file:LINE' for JSONL, 'file:LINE (sample N)' for JSON arrays (the line where the
        sample starts), 'file: row N' for tables."""
        if self.is_jsonl:
            if self._positions is None:
                self._positions = _record_lines(self.path)
            return f"{self.path}:{self._positions[row]}"
        number = self._positions[row] if self._positions else row + 1
        if self.path.suffix.lower() in (".json", ".jsonl"):
            return f"{self.path}:{_sample_lines(self.path)[number - 1]} (sample {number})"
        return f"{self.path}: row {number}"


def read_file(path: Path) -> SourceFile:
    """Read with datasets; where datasets cannot (a broken line, fields whose type changes
    from record to record), read the records with Python's json and keep each as JSON
    text in one column, so every datasets version reads every record the same way."""
    from datasets import load_dataset

    builder = BUILDERS[path.suffix.lower()]
    notes = []
    if path.suffix.lower() == ".jsonl" and _is_json_document(path):
        notes.append(f"{path}: holds one JSON document (pretty-printed JSON), not one record a line; "
                     "read as JSON, line numbers are the lines where each sample starts")
    try:
        with quiet_datasets():
            return SourceFile(path, load_dataset(builder, data_files=str(path), split="train"), notes=notes)
    except Exception as exc:  # datasets wraps parser errors in several types
        if builder != "json":
            reason = str(exc.__cause__ or exc).rstrip(".")
            raise UserError(f"{path}: cannot be read as {builder}: {reason}. Fix or re-export the file.") from None
    read = _read_json_array(path) if _is_json_document(path) else _read_jsonl_line_by_line(path)
    read.notes = notes
    return read


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
            bad.append(Problem(f"{path}:{_sample_lines(path)[number - 1]} (sample {number})",
                               f"a JSON {type(value).__name__}, not an object with the sample's fields.",
                               "not a JSON object"))
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
                bad.append(Problem(f"{path}:{number}", f"not valid JSON ({exc.msg}, column {exc.colno}).",
                                   "not valid JSON"))
                continue
            if isinstance(value, list):
                bad.append(Problem(f"{path}:{number}", "a JSON list; each line must be one JSON object (a record)"
                                   + (', e.g. {"messages": [...]} around a list of messages.'
                                      if value and isinstance(value[0], dict) and "role" in value[0] else "."),
                                   "a list, not a record"))
                continue
            if not isinstance(value, dict):
                bad.append(Problem(f"{path}:{number}", f"a JSON {type(value).__name__}, not an object with the "
                                   "sample's fields.", "not a JSON object"))
                continue
            good.append(line.rstrip("\r\n"))
            good_lines.append(number)
    return SourceFile(path, _raw_rows(good), bad_lines=bad, _positions=good_lines)


def _raw_rows(texts: list[str]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({RAW: texts}) if texts else None


@functools.lru_cache(maxsize=256)
def _is_json_document(path: Path) -> bool:
    """A JSON array, or one object spread over several lines (pretty-printed), rather than
    JSON Lines: a .json file that starts with '['; any file whose first line alone is not
    a whole JSON value while the whole file is one."""
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        if path.suffix.lower() == ".json" and head.startswith(b"["):
            return True
        if not head.startswith((b"[", b"{")):
            return False
        handle.seek(0)
        first = handle.readline().strip().lstrip(b"\xef\xbb\xbf")
    try:
        json.loads(first)
        return False
    except ValueError:
        pass
    try:
        json.loads(path.read_bytes())
        return True
    except ValueError:
        return False


@functools.lru_cache(maxsize=8)
def _sample_lines(path: Path) -> list[int]:
    """The 1-based line where each sample of a JSON array (or the one object) starts,
    found with the json module's own scanner from value to value."""
    text = path.read_text(encoding="utf-8-sig")
    decoder = json.JSONDecoder()
    position = len(text) - len(text.lstrip())
    if not text.startswith("[", position):
        return [text.count("\n", 0, position) + 1]
    lines, line, counted = [], 1, 0
    position += 1
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return lines
        line += text.count("\n", counted, position)
        counted = position
        lines.append(line)
        position = decoder.raw_decode(text, position)[1]


def _record_lines(path: Path) -> list[int]:
    """Line numbers of the non-blank lines: datasets skips blank lines in JSONL."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        return [number for number, line in enumerate(handle, start=1) if line.strip()]
