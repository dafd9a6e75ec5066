"""Parity: the same recipe on two backends (or against a stored curve), step by step.

Same seed, same data order, same precision (fp32 unless asked otherwise), a fixed
number of steps; the per-step training losses side by side and the largest relative
difference, against a tolerance. A difference that stays under it says the hardware
is not why two loss curves differ; one that grows says where to look.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from portaft.errors import UserError


@dataclass
class Curve:
    label: str  # backend, or backend:device
    losses: list[float]
    versions: dict[str, str] = field(default_factory=dict)


def parse_target(text: str) -> tuple[str, str]:
    """'NAME:cpu' -> ('NAME', 'cpu'); 'NAME' -> ('NAME', 'auto')."""
    backend, _, device = text.partition(":")
    if device not in ("", "auto", "cpu"):
        raise UserError(f"--backends {text!r}: the part after ':' is a device, auto or cpu (as in NAME:cpu).")
    return backend, device or "auto"


def run_curve(recipe: Any, target: str, steps: int, precision: str, overrides: Sequence[str] = (),
              echo: Callable[[str], None] = print) -> Curve:
    from portaft.runner import run
    from portaft.runner.outputs import library_versions

    backend, device = parse_target(target)
    with tempfile.TemporaryDirectory(prefix="portaft-parity-") as folder:
        fixed = [
            f"train.output_dir={folder}", f"train.max_steps={steps}", "train.logging_steps=1",
            "train.save_strategy=no", "train.report_to=none", f"device={device}", "eval_prompts=[]",
        ]
        if precision == "fp32":
            fixed += ["train.bf16=false", "train.fp16=false", "model.dtype=float32"]
        else:
            fixed += ["train.bf16=true", "model.dtype=bfloat16"]
        result = run(recipe, backend=backend, overrides=[*overrides, *fixed], echo=echo)
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    return Curve(target, losses, library_versions())


def compare(a: Curve, b: Curve, tolerance: float) -> tuple[list[dict], float, bool]:
    """Rows (step, a, b, relative difference), the largest difference, and whether it passes."""
    if len(a.losses) != len(b.losses):
        raise UserError(f"{a.label} logged {len(a.losses)} losses but {b.label} logged {len(b.losses)}: "
                        "compare runs of the same recipe and number of steps.")
    rows = []
    for step, (x, y) in enumerate(zip(a.losses, b.losses), start=1):
        rows.append({"step": step, a.label: x, b.label: y, "relative": abs(x - y) / max(abs(x), abs(y), 1e-12)})
    worst = max((r["relative"] for r in rows), default=0.0)
    return rows, worst, worst <= tolerance


def save_golden(path: Path, curve: Curve, recipe_source: str, steps: int, precision: str) -> None:
    path.write_text(json.dumps({"recipe": recipe_source, "target": curve.label, "steps": steps,
                                "precision": precision, "losses": curve.losses, "versions": curve.versions},
                               indent=2) + "\n", encoding="utf-8")


def load_golden(path: Path) -> tuple[Curve, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Curve(f"golden:{data['target']}", list(data["losses"]), data.get("versions", {})), data
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: not a golden curve written by `portaft parity --save-golden` ({exc}).") from None


def table(rows: list[dict], labels: tuple[str, str]) -> str:
    lines = [f"{'step':>5}  {labels[0]:>14}  {labels[1]:>14}  {'rel. diff':>10}"]
    for row in rows:
        lines.append(f"{row['step']:>5}  {row[labels[0]]:>14.8f}  {row[labels[1]]:>14.8f}  {row['relative']:>10.2e}")
    return "\n".join(lines)
