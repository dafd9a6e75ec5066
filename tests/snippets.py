"""The code blocks of README.md and docs/*.md, as a reader meets them (tests/runs/test_snippets.py runs them).

A fenced block tagged `bash` or `python` is a command to run. Every one runs, in the
order of the pages (README.md first, then docs/ by name), unless the line right above
its fence is an HTML comment `<!-- not run: REASON -->` saying why not (it needs a GPU or
an NPU, it is a synopsis with placeholders, it installs into the environment...). Blocks
in other languages (yaml, toml, untagged output) are shown text, not commands.

One rule adapts a command to the test: a leading `pip install ... &&` is dropped, because
the test runs in the environment that is already installed (installing would repoint it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNNABLE = ("bash", "python")
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
PIP_PREFIX = re.compile(r"^\s*pip install [^&\n]*&&\s*", flags=re.M)


@dataclass(frozen=True)
class Snippet:
    page: str  # relative to the repository root
    line: int  # the fence's line
    language: str
    code: str
    not_run: str | None  # the reason, from the marker above the fence

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    def as_run(self) -> str:
        """The code the test runs: a leading `pip install ... &&` dropped (see above)."""
        return PIP_PREFIX.sub("", self.code) if self.language == "bash" else self.code


def pages(repo: Path = REPO) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def snippets(repo: Path = REPO) -> list[Snippet]:
    found = []
    for page in pages(repo):
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = NOT_RUN.search(before)
            found.append(Snippet(str(page.relative_to(repo)), text.count("\n", 0, match.start()) + 1,
                                 match.group(1), match.group(2), marker.group(1) if marker else None))
    return found


def to_run(repo: Path = REPO) -> list[Snippet]:
    return [s for s in snippets(repo) if s.language in RUNNABLE and s.not_run is None]
