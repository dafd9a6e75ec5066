"""Step 7, save: the adapter (or, finetune: full, the whole model) and the tokenizer
carrying the template it trained with, the effective recipe, and the run record
(portaft_run.json, written last: it marks the run finished), then report.md and loss.png.
The first process writes; every process returns once it is done."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from portaft import data
from portaft.engines import fsdp

from .notes import Notes
from .outputs import RUN_FILE, library_versions, peak_device_memory_gib, write_recipe, write_run


@dataclass
class RunResult:
    output_dir: Path
    backend: str
    notes: list[str]
    metrics: dict[str, Any]
    log_history: list[dict]
    samples_before: list[dict] = field(default_factory=list)
    samples_after: list[dict] = field(default_factory=list)
    samples_during: list[dict] = field(default_factory=list)  # [{"step": N, "answers": [...]}]


def save(resolved: Any, world: Any, tokenizer: Any, built: Any, trained: Any, notes: Notes, started: float) -> RunResult:
    output_dir, trainer = world.output_dir, trained.trainer
    fsdp.full_state_for_final_save(trainer)  # checkpoints stay sharded; the adapter or model is saved whole
    trainer.save_model(str(output_dir))  # the Trainer saves from the first process only
    result = RunResult(output_dir, resolved.backend.name, list(notes), trained.metrics, list(trainer.state.log_history),
                       trained.before, trained.after, trained.during)
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        # save_model writes the pickled TrainingArguments beside the adapter too; they belong
        # in checkpoints (resuming reads them), the run's settings are in portaft_recipe.yaml
        (output_dir / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save_pretrained(str(output_dir))
        write_recipe(output_dir, resolved.recipe, result.notes)
        record = {
            "backend": result.backend,
            "device": str(world.args.device),
            "processes": world.processes,
            "template": built.template_name,
            "versions": library_versions(),
            "identity": world.identity,
            "resumed_from": str(world.start.checkpoint) if world.start.checkpoint else None,
            "notes": result.notes,
            "data": data.report_rows(built.reports),
            "eval_data": data.report_rows(built.eval_reports),
            "skipped": [str(problem) for problem in built.skipped],
            "metrics": result.metrics,
            "peak_memory_gib": peak_device_memory_gib(world.args.device),
            "plan": trained.plan,
            "log_history": result.log_history,
            "samples": {"before": result.samples_before, "during": result.samples_during,
                        "after": result.samples_after},
            "seconds": round(time.time() - started, 1),
        }
        write_run(output_dir, record)
        _write_report(output_dir, record, notes.say)
        notes.say(f"adapter saved in {output_dir}")
    world.finish()
    return result


def already_finished(resolved: Any, world: Any, notes: Notes) -> RunResult:
    """The output folder holds this very run, finished: nothing to do but say so."""
    record = world.start.finished
    steps = next((e.get("step") for e in reversed(record.get("log_history", [])) if "step" in e), "?")
    notes.say(f"{world.output_dir} already holds this run, finished at step {steps}: nothing to do. To train it "
              "again: resume: false and overwrite: true (on the command line: resume=false overwrite=true).")
    world.finish(wait=False)
    samples = record.get("samples", {})
    return RunResult(world.output_dir, resolved.backend.name, list(notes), record.get("metrics", {}),
                     record.get("log_history", []), samples.get("before", []), samples.get("after", []),
                     samples.get("during", []))


def _write_report(output_dir: Path, record: dict, say: Callable[[str], None]) -> None:
    """report.md and loss.png are for people: a failure there warns, it never costs a finished run."""
    from .report import write_report

    try:
        chart, report = write_report(output_dir, record)
    except Exception as exc:  # noqa: BLE001 (whatever broke, the adapter and portaft_run.json are saved)
        say(f"warning: no report written ({type(exc).__name__}: {exc}); the run is complete, its record is "
            f"{output_dir / RUN_FILE}")
        return
    say(f"report in {report}, loss chart in {chart}")
