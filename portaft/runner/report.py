"""A finished run, readable without any service: report.md and loss.png next to the adapter."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import yaml

from .outputs import RECIPE_FILE, RUN_FILE

REPORT_FILE = "report.md"
LOSS_CHART = "loss.png"
# what the loss chart draws per optimizer step, one panel each, when the Trainer logged it
PANELS = (("loss", "training loss"), ("grad_norm", "grad norm"), ("learning_rate", "learning rate"))
DATA_COLUMNS = ("records", "bad", "samples", "tokens", "trained_tokens", "truncated", "dropped")


def write_report(output_dir: Path, record: dict) -> list[Path]:
    """Write loss.png and report.md into `output_dir` from the run record (portaft_run.json's
    content) and the effective recipe saved beside it; return the paths written."""
    output_dir = Path(output_dir)
    recipe = read_recipe(output_dir)
    chart = output_dir / LOSS_CHART
    loss_figure(record.get("log_history") or [], title=f"{output_dir.name}: per optimizer step").savefig(chart, dpi=110)
    report = output_dir / REPORT_FILE
    report.write_text(render_report(output_dir.name, record, recipe), encoding="utf-8")
    return [chart, report]


def read_recipe(output_dir: Path) -> dict:
    path = Path(output_dir) / RECIPE_FILE
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged quantity; entries without it (the final summary) are skipped."""
    steps, values = [], []
    for entry in log_history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "step" in entry:
            steps.append(int(entry["step"]))
            values.append(float(value))
    return steps, values


def loss_figure(log_history: list[dict], title: str) -> Any:
    """One panel per logged quantity, sharing the step axis. A bare matplotlib Figure
    renders through Agg with no display and no pyplot global state."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    drawn = [(label, *series(log_history, key)) for key, label in PANELS]
    drawn = [d for d in drawn if d[1]]
    fig = Figure(figsize=(8, 1.2 + 2.4 * max(1, len(drawn))), layout="constrained")
    axes = fig.subplots(max(1, len(drawn)), 1, sharex=True, squeeze=False)[:, 0]
    axes[0].set_title(title)
    if not drawn:
        axes[0].text(0.5, 0.5, "no training step was logged", ha="center", va="center", transform=axes[0].transAxes)
    evaluated = series(log_history, "eval_loss")
    for ax, (label, steps, values) in zip(axes, drawn):
        ax.plot(steps, values, marker="o" if len(steps) < 50 else None, markersize=3, label=label)
        if label == "training loss" and evaluated[0]:  # held-out loss beside it, on the same scale
            ax.plot(*evaluated, marker="s", markersize=4, color="tab:orange", label="eval loss")
            ax.legend(loc="upper right")
        ax.set_ylabel("loss" if label == "training loss" and evaluated[0] else label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("optimizer step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))  # no step 2.5
    return fig


# --- report.md --------------------------------------------------------------------------

def render_report(name: str, record: dict, recipe: dict) -> str:
    intro = (f"Written by portaft when the run finished. Everything below comes from `{RUN_FILE}` (the whole "
             f"record) and `{RECIPE_FILE}` (the effective recipe) in this folder.\n")
    parts = [f"# portaft run: {name}\n", intro, _what_ran(record, recipe), _notes(record), _data(record),
             _losses(record), _answers(record), _versions(record)]
    return "\n".join(p for p in parts if p)


def _what_ran(record: dict, recipe: dict) -> str:
    model, lora = recipe.get("model") or {}, recipe.get("lora") or {}
    processes = record.get("processes", 1)
    where = f"device {record.get('device', '?')}, {processes} process{'es' if processes != 1 else ''}"
    rows = [("backend", f"{record.get('backend', '?')} ({where})")]
    if model:
        rows.append(("model", f"{model.get('name_or_path', '?')} (weights {model.get('dtype', '?')})"))
    rows.append(("template", record.get("template", "?")))
    finetune = recipe.get("finetune", "lora" if lora else None)
    if finetune == "lora":
        kind = "DoRA" if lora.get("use_dora") else "LoRA"
        settings = (f"r {fmt(lora.get('r'))}, alpha {fmt(lora.get('alpha'))}, dropout {fmt(lora.get('dropout'))}, "
                    f"target {fmt(lora.get('target_modules'))}")
        rows.append(("finetune", f"{kind}: {settings}"))
    elif finetune:
        rows.append(("finetune", f"{finetune} (every weight)"))
    if recipe.get("quantization"):
        rows.append(("quantization", fmt(recipe["quantization"])))
    if recipe.get("train"):
        rows += _train_rows(recipe["train"], processes)
    rows += [("max_length", fmt(recipe["max_length"]))] if "max_length" in recipe else []
    rows += [("packing", "on")] if recipe.get("packing") else []
    if record.get("resumed_from"):
        rows.append(("resumed from", record["resumed_from"]))
    return "## What ran\n\n" + table(("", ""), rows) + "\n"


def _train_rows(train: dict, processes: int) -> list[tuple[str, str]]:
    steps = train_setting(train, "max_steps")
    length = (f"max_steps {fmt(steps)}" if isinstance(steps, (int, float)) and steps > 0
              else f"{fmt(train_setting(train, 'num_train_epochs'))} epochs")
    warmup = [f"warmup {fmt(train[key])}{unit}" for key, unit in (("warmup_steps", " steps"),
                                                                   ("warmup_ratio", " of the steps")) if train.get(key)]
    batch = train_setting(train, "per_device_train_batch_size")
    accum = train_setting(train, "gradient_accumulation_steps")
    total = f" = {batch * accum * processes}" if all(isinstance(v, int) for v in (batch, accum)) else ""
    batches = f"{fmt(batch)} per device x {fmt(accum)} accumulation x {processes} process"
    return [("learning rate", shown_setting(train, "learning_rate")),
            ("schedule", ", ".join([shown_setting(train, "lr_scheduler_type"), *warmup])),
            ("length", length),
            ("batch", f"{batches}{'es' if processes != 1 else ''}{total}"),
            ("precision", _precision(train)),
            ("seed", shown_setting(train, "seed"))]


def _precision(train: dict) -> str:
    if train.get("bf16"):
        return "bf16 mixed precision"
    if train.get("fp16"):
        return "fp16 mixed precision"
    return "fp32"


def _notes(record: dict) -> str:
    notes, skipped = record.get("notes") or [], record.get("skipped") or []
    lines = ["## What portaft and the backend changed\n"]
    lines += [f"- {n}" for n in notes] or ["- nothing: the recipe ran as written"]
    if skipped:
        lines += ["", f"{len(skipped)} bad record(s) skipped (`skip_bad_samples`), first ones:", ""]
        lines += [f"- {cell(s)}" for s in skipped[:10]]
    return "\n".join(lines) + "\n"


def _data(record: dict) -> str:
    sources = record.get("data") or []
    if not sources:
        return ""
    rows = [(f"{s.get('path', '?')} ({s.get('format', '?')})", *(s.get(c, "") for c in DATA_COLUMNS)) for s in sources]
    if len(sources) > 1:
        rows.append(("**all**", *(sum(s.get(c) or 0 for s in sources) for c in DATA_COLUMNS)))
    headers = ("source", "records", "bad", "samples", "tokens", "trained tokens", "truncated", "dropped")
    return "## Data\n\n" + table(headers, rows) + "\n"


def _losses(record: dict) -> str:
    log_history, metrics = record.get("log_history") or [], record.get("metrics") or {}
    steps, losses = series(log_history, "loss")
    lines = ["## Loss\n", f"![loss (and eval loss), grad norm and learning rate per step]({LOSS_CHART})\n"]
    if losses:
        finite = [(v, s) for s, v in zip(steps, losses) if math.isfinite(v)]
        low, at = min(finite) if finite else (math.nan, "?")
        rows = [("logged steps", f"{len(steps)} (steps {steps[0]} to {steps[-1]})"),
                ("first loss", f"{losses[0]:.4f} (step {steps[0]})"),
                ("last loss", f"{losses[-1]:.4f} (step {steps[-1]})"),
                ("lowest loss", f"{low:.4f} (step {at})")]
    else:
        rows = [("logged steps", "none: no loss was logged (zero steps, or logging_steps larger than the run)")]
    eval_steps, eval_losses = series(log_history, "eval_loss")
    if eval_losses:
        low, at = min(zip(eval_losses, eval_steps))
        rows += [("eval loss", f"{len(eval_steps)} evaluations: first {eval_losses[0]:.4f} (step {eval_steps[0]}), "
                               f"last {eval_losses[-1]:.4f} (step {eval_steps[-1]}), lowest {low:.4f} (step {at})")]
    if isinstance(metrics.get("train_loss"), (int, float)):
        rows.append(("mean loss (train_loss)", f"{metrics['train_loss']:.4f}"))
    if isinstance(metrics.get("train_runtime"), (int, float)):
        speed = metrics.get("train_samples_per_second")
        rows.append(("training time", f"{metrics['train_runtime']:.1f} s" + (f" ({speed} samples/s)" if speed else "")))
    if isinstance(record.get("peak_memory_gib"), (int, float)):
        rows.append(("peak device memory", f"{record['peak_memory_gib']} GiB (tensors, as torch counts them)"))
    if "seconds" in record:
        rows.append(("whole run", f"{record['seconds']} s (loading, data, answers and saving included)"))
    return "\n".join(lines) + "\n" + table(("", ""), rows) + "\n"


def _answers(record: dict) -> str:
    samples = record.get("samples") or {}
    moments = [("before training", samples.get("before") or [])]
    moments += [(f"step {d.get('step', '?')}", d.get("answers") or []) for d in samples.get("during") or []]
    moments.append(("after training", samples.get("after") or []))
    prompts: dict[str, list[tuple[str, str]]] = {}
    for when, answers in moments:
        for item in answers:
            prompts.setdefault(item.get("prompt", "?"), []).append((when, item.get("answer", "")))
    if not prompts:
        return "## Answers\n\nNo `eval_prompts` in the recipe: add some to see the model's answers change.\n"
    lines = ["## Answers to eval_prompts (greedy)\n"]
    for prompt, rows in prompts.items():
        lines += [f"**{cell(prompt)}**\n", table(("when", "answer"), [(w, a or "(empty)") for w, a in rows]), ""]
    return "\n".join(lines)


def _versions(record: dict) -> str:
    versions = record.get("versions") or {}
    return "## Versions\n\n" + table(("library", "version"), list(versions.items())) + "\n" if versions else ""


# --- helpers shared with compare.py --------------------------------------------------------

@functools.cache
def _training_argument_defaults() -> dict[str, Any]:
    try:
        from transformers import TrainingArguments
    except Exception:  # noqa: BLE001 (the report must not fail for a default it cannot look up)
        return {}
    return {f.name: f.default for f in dataclasses.fields(TrainingArguments) if f.default is not dataclasses.MISSING}


def train_setting(train: dict, name: str) -> Any:
    """A train: value as the run used it: the recipe's, else TrainingArguments' default."""
    return train[name] if name in train else _training_argument_defaults().get(name)


def shown_setting(train: dict, name: str) -> str:
    return fmt(train[name]) if name in train else f"{fmt(train_setting(train, name))} (default)"


def fmt(value: Any) -> str:
    value = getattr(value, "value", value)  # TrainingArguments' enums (SchedulerType.LINEAR) as written in YAML
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items())
    return str(value)


def cell(value: Any) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, lines joined, tags shown as text."""
    return fmt(value).replace("|", "\\|").replace("<", "&lt;").replace("\r", "").replace("\n", "<br>")


def table(headers: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
