"""Finished runs side by side: their loss curves on one chart, and the recipe settings that differ."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portaft.errors import UserError
from portaft.recipe.yamlpaths import leaf_paths
from portaft.runner.outputs import RECIPE_FILE, RUN_FILE
from portaft.runner.report import fmt, read_recipe, series, train_setting

# differ between any two runs by construction: naming them would say nothing
NOT_COMPARED = ("train.output_dir", "train.logging_dir", "train.run_name")
# the tutorial's names for the settings people compare most
SHORT_NAMES = {"train.learning_rate": "lr", "train.num_train_epochs": "epochs", "train.max_steps": "steps",
               "train.per_device_train_batch_size": "batch", "train.gradient_accumulation_steps": "accum",
               "model.name_or_path": "model"}
LEGEND_SETTINGS = 4  # more would not fit a legend line
_UNSET = object()


@dataclass
class FinishedRun:
    folder: Path
    label: str  # the folder's name (its path where two names clash)
    record: dict  # portaft_run.json
    settings: dict[str, Any]  # the effective recipe, flattened: {"lora.r": 8, "train.learning_rate": 2e-4, ...}


def load_runs(folders: Sequence[str | Path]) -> list[FinishedRun]:
    if len(folders) < 2:
        raise UserError("compare needs at least two run folders (each the train.output_dir of a finished run), "
                        "e.g. `portaft compare output/lr2e-4 output/lr1e-4`.")
    runs = [_load_run(Path(f)) for f in folders]
    if len({r.label for r in runs}) < len(runs):
        for run in runs:
            run.label = str(run.folder)
    return runs


def _load_run(folder: Path) -> FinishedRun:
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder. Give the train.output_dir of a finished portaft run.")
    run_file = folder / RUN_FILE
    if not run_file.is_file():
        raise UserError(f"{folder} is not a finished portaft run: it has no {RUN_FILE}, which portaft writes when "
                        "training ends. Give the train.output_dir of a run that finished, or run its recipe to the "
                        "end with `portaft run` first.")
    if not (folder / RECIPE_FILE).is_file():
        raise UserError(f"{folder}: {RECIPE_FILE} is missing, so its settings cannot be compared. portaft writes it "
                        f"with {RUN_FILE}; copy it back next to that file.")
    try:
        record = json.loads(run_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{run_file}: not a readable run record ({exc}).") from None
    return FinishedRun(folder, folder.resolve().name, record, flatten(read_recipe(folder)))


def flatten(node: Any) -> dict[str, Any]:
    """Dotted YAML paths as overrides write them (`lora.r`, `data.0.path`); a list of plain
    values (target_modules, eval_prompts) stays one value."""
    return {".".join(map(str, path)): value for path, value in leaf_paths(node).items()}


def differing_settings(runs: list[FinishedRun]) -> dict[str, list[str]]:
    """Each recipe path whose value is not the same in every run, with each run's value as shown.
    A train: key one recipe leaves unset counts as TrainingArguments' default."""
    keys = list(dict.fromkeys(k for run in runs for k in run.settings if k not in NOT_COMPARED))
    differing = {}
    for key in keys:
        values = [_value(run.settings, key) for run in runs]
        if len({_same(v) for v, _ in values}) > 1:
            differing[key] = ["unset" if v is _UNSET else fmt(v) + (" (default)" if default else "")
                              for v, default in values]
    return differing


def _same(value: Any) -> Any:
    """What equality compares: numbers by value (YAML's 3 and 3.0), anything else as shown."""
    if value is _UNSET:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return fmt(value)


def _value(settings: dict[str, Any], key: str) -> tuple[Any, bool]:
    if key in settings:
        return settings[key], False
    if key.startswith("train."):
        default = train_setting({}, key.removeprefix("train."))
        if default is not None:
            return default, True
    return _UNSET, False


def results(run: FinishedRun) -> dict[str, str]:
    steps, losses = series(run.record.get("log_history") or [], "loss")
    finite = [v for v in losses if math.isfinite(v)]
    metrics = run.record.get("metrics") or {}
    runtime, mean, memory = metrics.get("train_runtime"), metrics.get("train_loss"), run.record.get("peak_memory_gib")
    return {"final loss": f"{losses[-1]:.4f}" if losses else "-",
            "lowest loss": f"{min(finite):.4f}" if finite else "-",
            "mean loss (train_loss)": f"{mean:.4f}" if isinstance(mean, (int, float)) else "-",
            "steps": str(steps[-1]) if steps else "-",
            "training time (s)": f"{runtime:.1f}" if isinstance(runtime, (int, float)) else "-",
            "peak memory (GiB)": str(memory) if isinstance(memory, (int, float)) else "-"}


def comparison_table(runs: list[FinishedRun], differing: dict[str, list[str]]) -> str:
    rows = [[key, *values] for key, values in differing.items()]
    if not rows:
        rows = [["(no recipe setting differs)", *[""] * len(runs)]]
    rows.append([""] * (len(runs) + 1))
    outcomes = [results(run) for run in runs]
    rows += [[name, *(o[name] for o in outcomes)] for name in outcomes[0]
             if any(o[name] != "-" for o in outcomes)]  # e.g. no peak memory on the CPU
    header = ["", *(run.label for run in runs)]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *rows])


def legend_label(index: int, run: FinishedRun, differing: dict[str, list[str]]) -> str:
    names = [k.rsplit(".", 1)[-1] for k in differing]
    shown = [f"{SHORT_NAMES.get(k) or (n if names.count(n) == 1 else k)}={_brief(values[index])}"
             for (k, values), n in zip(differing.items(), names)]
    extra = " ..." if len(shown) > LEGEND_SETTINGS else ""
    return run.label + (f" ({' '.join(shown[:LEGEND_SETTINGS])}{extra})" if shown else "")


def _brief(value: str) -> str:
    value = value.removesuffix(" (default)")
    return ".../" + Path(value).name if "/" in value and len(value) > 24 else value  # a long path: its last part


def loss_chart(runs: list[FinishedRun], differing: dict[str, list[str]]) -> Any:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for i, run in enumerate(runs):
        steps, losses = series(run.record.get("log_history") or [], "loss")
        label = legend_label(i, run, differing) + ("" if losses else " (no loss logged)")
        ax.plot(steps, losses, marker="o" if len(steps) < 50 else None, markersize=3, label=label)
    ax.set_title("training loss per optimizer step")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def check_chart_path(out: Path) -> None:
    """Before any work: a chart file name matplotlib can write."""
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    if out.suffix.lstrip(".").lower() not in kinds:
        raise UserError(f"--out {out}: give a file name ending in .png (or .svg, .pdf, .jpg: any format "
                        "matplotlib writes).")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give a file name, e.g. {out / 'compare.png'}.")
