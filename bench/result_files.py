"""How a benchmark script leaves its results: OUT/NAME.json, OUT/NAME.md, the table printed.

Imported as a sibling module (`python bench/NAME.py` puts bench/ first on sys.path).
"""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: Path | str, name: str, record: dict, table: str) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (out / f"{name}.md").write_text(table, encoding="utf-8")
    print(table, end="")
