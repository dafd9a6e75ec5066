"""Bad records: where each is, why, and the few words that group it; the one error that
lists them, or the count of those skipped, and `skipped.jsonl` with every one."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

SHOWN_PROBLEMS = 20  # bad records listed in one error; the rest are counted
SHOWN_SKIPPED = 10  # skipped records listed in the run's notes; all are in skipped.jsonl
SKIPPED_FILE = "skipped.jsonl"


@dataclass
class Problem:
    where: str  # "file:LINE", "file: sample N" or "file: row N"
    why: str
    reason: str = "bad record"

    def __str__(self) -> str:
        return f"{self.where}: {self.why}"


def problem_list(unusable: list[str], problems: list[Problem]) -> str:
    """The one error message for files that cannot be used and bad records."""
    lines = [f"{len(unusable)} data file(s) cannot be used:"] + [f"  {p}" for p in unusable] if unusable else []
    if problems:
        lines.append(f"{len(problems)} bad record(s) in the data{_by_reason(problems)}:")
        lines += [f"  {p}" for p in problems[:SHOWN_PROBLEMS]]
        if len(problems) > SHOWN_PROBLEMS:
            lines.append(f"  ... and {len(problems) - SHOWN_PROBLEMS} more")
        lines.append("Fix them, or set skip_bad_samples: true (or --skip-bad-samples) to skip and count them.")
    return "\n".join(lines)


def skipped_lines(problems: list[Problem], records: int) -> list[str]:
    """'skipped 30 of 530 records: 25 empty conversation, 5 preference (DPO) data', the first
    few, and how many more (every one is in skipped.jsonl of the output folder)."""
    if not problems:
        return []
    lines = [f"skipped {len(problems)} of {records} records: {_by_reason(problems)[2:]}"]
    lines += [str(p) for p in problems[:SHOWN_SKIPPED]]
    if len(problems) > SHOWN_SKIPPED:
        lines.append(f"... and {len(problems) - SHOWN_SKIPPED} more (every skipped record is in {SKIPPED_FILE} "
                     "in the output folder)")
    return lines


def write_skipped(problems: list[Problem], folder: Path) -> Path:
    """Every skipped record, one JSON object a line: where, why, reason."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SKIPPED_FILE
    with open(path, "w", encoding="utf-8") as handle:
        for problem in problems:
            handle.write(json.dumps(asdict(problem), ensure_ascii=False) + "\n")
    return path


def _by_reason(problems: list[Problem]) -> str:
    counts = Counter(p.reason for p in problems)
    return ": " + ", ".join(f"{count} {reason}" for reason, count in counts.most_common())
