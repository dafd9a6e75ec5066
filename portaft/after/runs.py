"""`portaft runs [DIR]`: the runs under a folder, each with its status, steps, last loss and when.

A run's folder is one that holds portaft_run.json (written when a run finishes) or
portaft_log.jsonl (written while it trains). Status: finished (its record was written
after its last start), running (its last start has no end, and that process is still
alive on this machine; on another machine, a log written in the last 10 minutes),
stopped (anything else: killed, crashed, interrupted; `portaft run` again resumes it).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from portaft.runner.livelog import LOG_FILE
from portaft.runner.outputs import RUN_FILE

RECENT_S = 600  # a log on another host written this recently: running
DEEPEST = 4  # folders below DIR searched for runs


@dataclass
class RunRow:
    folder: Path
    status: str  # finished | running | stopped
    step: int | None
    max_steps: int | None
    loss: float | None
    when: float  # seconds since the epoch: the newest of its record and log


def find_runs(root: Path) -> list[RunRow]:
    rows = [_row(folder) for folder in _run_folders(Path(root), 0)]
    return sorted(rows, key=lambda r: r.when, reverse=True)


def _run_folders(folder: Path, depth: int):
    if (folder / RUN_FILE).is_file() or (folder / LOG_FILE).is_file():
        yield folder
        return
    if depth >= DEEPEST:
        return
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "checkpoint-")))
    except OSError:
        return
    for child in children:
        yield from _run_folders(child, depth + 1)


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written as we read
    return entries


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _row(folder: Path) -> RunRow:
    log_path, run_path = folder / LOG_FILE, folder / RUN_FILE
    entries = _read_log(log_path)
    starts = [i for i, e in enumerate(entries) if e.get("event") == "start"]
    last = entries[starts[-1]:] if starts else entries
    start = last[0] if starts else {}
    record = {}
    if run_path.is_file():
        try:
            record = json.loads(run_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = {}
    times = [p.stat().st_mtime for p in (log_path, run_path) if p.is_file()]
    finished = bool(record) and run_path.stat().st_mtime >= start.get("time", 0)
    if finished:
        status = "finished"
        history = record.get("log_history") or []
    else:
        ended = any(e.get("event") == "end" for e in last)
        here = start.get("host") == socket.gethostname()
        live = _alive(int(start["pid"])) if here and "pid" in start else time.time() - max(times) < RECENT_S
        status = "running" if start and not ended and live else "stopped"
        history = [e for e in last if "step" in e and "event" not in e]
    losses = [e for e in history if isinstance(e.get("loss"), (int, float))]
    steps = [e["step"] for e in history if isinstance(e.get("step"), int)]
    return RunRow(folder, status, steps[-1] if steps else start.get("step"), start.get("max_steps"),
                  losses[-1]["loss"] if losses else None, max(times))


def table(rows: list[RunRow], root: Path) -> str:
    lines = [("RUN", "STATUS", "STEPS", "LOSS", "WHEN")]
    for row in rows:
        name = str(row.folder.relative_to(root)) if row.folder != root else str(row.folder)
        steps = "?" if row.step is None else f"{row.step}" + (f"/{row.max_steps}" if row.max_steps else "")
        loss = "-" if row.loss is None else f"{row.loss:.4f}"
        lines.append((name, row.status, steps, loss, time.strftime("%Y-%m-%d %H:%M", time.localtime(row.when))))
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)
