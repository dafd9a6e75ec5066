"""Step 2, world: the processes, this process's training arguments and device, and where
training starts (step 0, a checkpoint of this same run, or nothing left to do).

The backend's TrainingArguments set up torch.distributed and the device. Under torchrun
every process runs the whole spine; only the first writes to the output folder, and at
the end every process waits for it to finish (`finish`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checkpoints
from .notes import Notes


@dataclass
class World:
    processes: int
    rank: int
    args: Any  # the backend's TrainingArguments (portaft.protocols.TrainingArguments)
    identity: dict[str, Any]  # every recipe value that changes training (checkpoints.training_identity)
    start: checkpoints.Start
    keep: int | None  # train.save_total_limit: checkpoints portaft keeps (it rotates them itself)
    output_dir: Path

    @property
    def first(self) -> bool:
        return self.rank == 0

    def finish(self, wait: bool = True) -> None:
        """Several processes: every one returns once the first has written the outputs
        (`wait`), and leaves the process group at exit."""
        if self.processes == 1:
            return
        if wait:
            from accelerate import PartialState

            PartialState().wait_for_everyone()  # the state the training arguments set up
        _leave_process_group_at_exit()


def enter(resolved: Any, notes: Notes) -> World:
    recipe = resolved.recipe
    args = resolved.backend.training_arguments(**{
        **recipe.train,
        "save_total_limit": None,  # portaft rotates checkpoints, counting complete ones only (checkpoints.py)
        "report_to": resolved.tracking.report_to})
    notes.add(*_one_device_per_process(args, resolved.processes))
    identity = checkpoints.training_identity(recipe)
    start = checkpoints.plan_start(recipe, identity)
    world = World(resolved.processes, int(os.environ.get("RANK", "0")), args, identity, start,
                  recipe.train.get("save_total_limit"), Path(recipe.train["output_dir"]))
    if start.finished is None:
        if world.first:
            checkpoints.clear(start)
        notes.add(*start.notes)
    return world


def _one_device_per_process(args: Any, processes: int) -> list[str]:
    """One process that sees several GPUs would have transformers split every batch over
    them with nn.DataParallel: slower than DDP, and a flattened (one-row) batch cannot be
    split at all. Train on the first and say how to use them all."""
    gpus = getattr(args, "n_gpu", 1)
    if processes > 1 or gpus <= 1:
        return []
    args._n_gpu = 1  # what transformers' Trainer itself sets to keep DataParallel out
    return [f"{gpus} GPUs are visible to this one process: training on {args.device} only; "
            f"`portaft run --nproc {gpus} ...` trains on all {gpus} (one process each, DDP)"]


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _leave_process_group_at_exit() -> None:
    """A process group still alive when the interpreter shuts down is torn down by its
    C++ destructors in no promised order: in CI a process that had trained well once died
    there with SIGABRT ("terminate called without an active exception", gloo) and torchrun
    failed the run. Leave it before that, as accelerate's end_training and LLaMA-Factory do;
    at exit, not here, because a script may still use the group after run() returns."""
    import atexit

    atexit.unregister(_leave_process_group)  # once, however many runs the script makes
    atexit.register(_leave_process_group)
