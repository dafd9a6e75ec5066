"""Step 6, train: the backend's Trainer, fed portaft's batches and watched (watch.py),
resumed from the checkpoint world.py found, if any. Under `plan: auto`, a run out of
device memory in its first optimizer step (nothing trained yet) tries once more with a
smaller micro-batch and the same effective batch (execution.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from portaft.compat import numpy_in_checkpoints
from portaft.errors import UserError, first_line

from . import watch
from .execution import free_device_memory, smaller
from .notes import Notes


@dataclass
class Trained:
    trainer: Any  # portaft.protocols.Trainer
    metrics: dict[str, Any]
    before: list[dict]  # the eval prompts' answers before training
    after: list[dict]
    during: list[dict] = field(default_factory=list)  # [{"step": N, "answers": [...]}]
    plan: dict = field(default_factory=dict)  # the execution plan's record (portaft_run.json `plan`)


def train(resolved: Any, world: Any, model: Any, tokenizer: Any, built: Any, plan: Any, notes: Notes) -> Trained:
    trainer, watching = _watched_trainer(resolved, world, model, tokenizer, built, plan, notes)
    before = watching.ask("before training", trainer.model)
    checkpoint = world.start.checkpoint
    if checkpoint is not None:
        notes.say(f"resuming from {checkpoint} (step {world.start.step}); same recipe and data as the run that "
                  "wrote it")
    try:
        try:
            output = _fit(trainer, checkpoint)
        except Exception as exc:  # noqa: BLE001 (only an out-of-memory error in the first step is retried)
            if not _retry_smaller(exc, trainer, checkpoint, plan):
                raise _out_of_memory(exc, trainer, plan, world) or exc
            watching.loss.close()
            notes.add(*smaller(plan.execution, world.args, resolved.recipe, model, _first_line(exc)))
            del trainer
            _release(model, world.args.device)
            trainer, watching = _watched_trainer(resolved, world, model, tokenizer, built, plan, notes)
            output = _fit(trainer, None)
    finally:
        watching.loss.close()
        watching.live.close()
        for done in plan.on_exit:
            done()
    if watching.loss.bad_step is not None:
        raise watch.diverged(watching.loss, world.output_dir)
    after = watching.ask("after training", trainer.model)
    return Trained(trainer, dict(output.metrics), before, after, watching.during.during if watching.during else [],
                   plan.execution.record())


def _watched_trainer(resolved: Any, world: Any, model: Any, tokenizer: Any, built: Any, plan: Any,
                     notes: Notes) -> tuple[Any, Any]:
    evaluation = {"eval_dataset": built.eval_dataset} if built.eval_dataset is not None else {}
    trainer = resolved.backend.trainer(model=model, args=world.args, train_dataset=built.dataset,
                                       data_collator=plan.batches.collator, tokenizer=tokenizer,
                                       batch_sampler=plan.batches.sampler, **evaluation)
    return trainer, watch.attach(trainer, resolved, world, built.template, tokenizer, plan.callbacks, notes.say)


def _fit(trainer: Any, checkpoint: Any) -> Any:
    with numpy_in_checkpoints():
        return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)


def _retry_smaller(exc: Exception, trainer: Any, checkpoint: Any, plan: Any) -> bool:
    """Out of device memory before the first optimizer step, under plan auto, and not yet retried:
    no weight has changed, so a fresh Trainer with a smaller micro-batch trains the same run. Not
    under FSDP or DeepSpeed: they have already sharded or wrapped the model in place."""
    import torch

    engine = getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)
    return (isinstance(exc, torch.OutOfMemoryError) and plan.execution.mode == "auto" and checkpoint is None
            and not plan.execution.retries and trainer.state.global_step == 0 and not engine)


def _out_of_memory(exc: Exception, trainer: Any, plan: Any, world: Any) -> UserError | None:
    """An out-of-memory error that is not retried, said as what to change (not a traceback)."""
    import torch

    if not isinstance(exc, torch.OutOfMemoryError):
        return None
    e = plan.execution
    return UserError(
        f"out of device memory in step {trainer.state.global_step + 1} ({_first_line(exc)}), training "
        f"micro-batches of {e.micro_batch} x {e.accumulation} with gradient checkpointing "
        f"{'on' if e.checkpointing else 'off'} (plan {e.mode}: {e.why}). Lower train.per_device_train_batch_size "
        "(raising gradient_accumulation_steps keeps the effective batch) with plan: as_written, set "
        "train.gradient_checkpointing: true, or lower max_length; checkpoints in "
        f"{world.output_dir} let a rerun resume.")


def _release(model: Any, device: Any) -> None:
    """The failed attempt's gradients and the run's device's cached blocks given back before the next one."""
    model.zero_grad(set_to_none=True)
    free_device_memory(device)


def _first_line(exc: Exception) -> str:
    return first_line(exc) or type(exc).__name__
