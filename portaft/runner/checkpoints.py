"""Checkpoints that are complete or ignored, and where a run starts: resume, refuse or skip.

transformers writes `checkpoint-N` file by file; a run killed half-way leaves a folder
that looks like a checkpoint but is not one. portaft marks a checkpoint complete only
after the Trainer has finished writing it, by atomically adding `portaft_checkpoint.json`
(the step and the run's *identity*: every recipe value that changes training, plus the
data files' contents). Resume takes the newest marked checkpoint and only when its
identity equals the current one; unmarked folders are removed. Rotation
(`train.save_total_limit`) is done here too, counting only complete checkpoints, so a
kill can never leave the output folder without its last good checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.trainer_callback import TrainerCallback

from portaft.errors import UserError
from portaft.recipe import Recipe
from portaft.recipe.yamlpaths import format_path, leaf_paths

from .outputs import RUN_FILE, write_json_atomically  # RUN_FILE is written last by a finished run

MARKER = "portaft_checkpoint.json"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

# Recipe values that do not change what is trained: they may differ between a run and
# its resumption. Everything else (model, data, template, LoRA, lr, batch, seed...) must not.
NOT_TRAINING = {
    "resume", "overwrite", "eval_prompts", "eval_every", "skip_bad_samples",
    "train.output_dir", "train.logging_dir", "train.logging_steps", "train.logging_first_step",
    "train.logging_strategy", "train.logging_nan_inf_filter", "train.save_steps", "train.save_strategy",
    "train.save_total_limit", "train.save_only_model", "train.save_safetensors", "train.report_to",
    "train.run_name", "train.disable_tqdm", "train.dataloader_num_workers", "train.dataloader_pin_memory",
    "train.dataloader_persistent_workers", "train.dataloader_prefetch_factor", "train.push_to_hub",
    "train.ddp_find_unused_parameters", "train.accelerator_config.non_blocking",
}


def training_identity(recipe: Recipe) -> dict[str, Any]:
    """{yaml.path: value} of everything that changes training, and a digest per data source."""
    from portaft.data.sources import source_files

    identity = {format_path(path): value for path, value in leaf_paths(recipe.model_dump(mode="json")).items()
                if not _not_training(path)}
    for index, source in enumerate(recipe.data):
        digest = hashlib.sha256()
        for path in source_files(source.path):
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        identity[f"data[{index}] contents"] = digest.hexdigest()[:16]
    return identity


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            lines.append(f"{key}: {_show(old.get(key, '<unset>'))} -> {_show(new.get(key, '<unset>'))}")
    return lines


def _show(value: Any) -> str:
    return value if isinstance(value, str) and value == "<unset>" else json.dumps(value, ensure_ascii=False)


def _not_training(path: tuple) -> bool:
    """A top-level key (eval_prompts, with everything under it), train.* key or one of its keys
    (train.accelerator_config.non_blocking) that may change."""
    return (format_path(path[:1]) in NOT_TRAINING or format_path(path[:2]) in NOT_TRAINING
            or format_path(path[:3]) in NOT_TRAINING
            or (path[0] == "train" and str(path[1]).startswith("hub_")))


# --- what is in an output folder -------------------------------------------------------

def checkpoint_folders(output_dir: Path) -> list[tuple[int, Path]]:
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return sorted(found)


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def read_marker(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MARKER).read_text(encoding="utf-8"))


# --- where this run starts ----------------------------------------------------------------

@dataclass
class Start:
    checkpoint: Path | None = None  # resume from here; None = from step 0
    step: int = 0
    finished: dict | None = None  # the record of a finished identical run: nothing to do
    notes: list[str] = field(default_factory=list)
    remove: list[Path] = field(default_factory=list)  # incomplete or overwritten checkpoints


def plan_start(recipe: Recipe, identity: dict[str, Any]) -> Start:
    """Decide from the output folder and `resume:` where training starts; refuse rather
    than mix two different runs in one folder. Changes nothing on disk (see `clear`)."""
    output_dir = Path(recipe.train["output_dir"])
    folders = checkpoint_folders(output_dir)
    incomplete = [p for _, p in folders if not is_complete(p)]
    complete = [(s, p) for s, p in folders if is_complete(p)]
    non_empty = output_dir.is_dir() and any(output_dir.iterdir())

    if recipe.resume is False:
        if not non_empty:
            return Start()
        if not recipe.overwrite:
            raise UserError(
                f"train.output_dir: {output_dir} is not empty and resume is false. Set overwrite: true to start over "
                "there (its checkpoints are removed), resume: auto to continue it, or choose another output_dir."
            )
        start = Start(remove=[p for _, p in folders])
        if folders:
            start.notes.append(f"overwrite: true: removing {len(folders)} checkpoint folder(s) of the earlier run "
                               f"in {output_dir}")
        return start

    start = Start(remove=incomplete)
    for folder in incomplete:
        start.notes.append(f"{folder} is incomplete (the run stopped while writing it): removing it")
    finished = _finished_record(output_dir)
    if finished is not None:
        _refuse_if_different(finished.get("identity"), identity, f"the finished run in {output_dir}")
        start.finished = finished
        return start
    if not complete:
        if recipe.resume is True:
            raise UserError(f"resume: true, but {output_dir} holds no complete checkpoint to resume from. "
                            "Set resume: auto to start from step 0 when there is none.")
        return start
    step, folder = complete[-1]
    _refuse_if_different(read_marker(folder).get("identity"), identity, str(folder))
    start.checkpoint, start.step = folder, step
    return start


def _finished_record(output_dir: Path) -> dict | None:
    path = output_dir / RUN_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _refuse_if_different(old: dict | None, new: dict[str, Any], what: str) -> None:
    if old is None:
        raise UserError(f"{what} was written without a record of its recipe (an older portaft?), so portaft cannot "
                        "tell whether continuing it would mix two different runs. Set resume: false and "
                        "overwrite: true to start over, or choose another train.output_dir.")
    changed = differences(old, new)
    if changed:
        listed = "\n".join(f"  {line}" for line in changed)
        raise UserError(
            f"{what} was trained with a different recipe; continuing it would mix two runs. What differs "
            f"(then -> now):\n{listed}\nUndo these changes to resume, choose another train.output_dir, or set "
            "resume: false and overwrite: true to start over."
        )


def clear(start: Start) -> None:
    for folder in start.remove:
        shutil.rmtree(folder, ignore_errors=True)


# --- while training -------------------------------------------------------------------------

class CompleteCheckpoints(TrainerCallback):
    """After the Trainer has written `checkpoint-N`, mark it complete, then keep the
    newest `keep` complete ones (transformers' own rotation is switched off: it would
    count checkpoints that are not yet marked)."""

    def __init__(self, identity: dict[str, Any], keep: int | None):
        self.identity = identity
        self.keep = keep

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        output_dir = Path(args.output_dir)
        folder = output_dir / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            return
        write_json_atomically(folder / MARKER, {"step": state.global_step, "identity": self.identity})
        if self.keep:
            complete = [p for _, p in checkpoint_folders(output_dir) if is_complete(p)]
            best = Path(state.best_model_checkpoint).resolve() if state.best_model_checkpoint else None
            for old in complete[:-self.keep]:
                if old.resolve() != best:
                    shutil.rmtree(old, ignore_errors=True)
