"""Step 6, train: the backend's Trainer, fed portaft's batches and watched (watch.py),
resumed from the checkpoint world.py found, if any."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from portaft.compat import numpy_in_checkpoints

from . import watch
from .notes import Notes


@dataclass
class Trained:
    trainer: Any  # portaft.protocols.Trainer
    metrics: dict[str, Any]
    before: list[dict]  # the eval prompts' answers before training
    after: list[dict]
    during: list[dict] = field(default_factory=list)  # [{"step": N, "answers": [...]}]


def train(resolved: Any, world: Any, model: Any, tokenizer: Any, built: Any, plan: Any, notes: Notes) -> Trained:
    evaluation = {"eval_dataset": built.eval_dataset} if built.eval_dataset is not None else {}
    trainer = resolved.backend.trainer(model=model, args=world.args, train_dataset=built.dataset,
                                       data_collator=plan.batches.collator, tokenizer=tokenizer,
                                       batch_sampler=plan.batches.sampler, **evaluation)
    watching = watch.attach(trainer, resolved, world, built.template, tokenizer, plan.callbacks, notes.say)
    before = watching.ask("before training", trainer.model)
    checkpoint = world.start.checkpoint
    if checkpoint is not None:
        notes.say(f"resuming from {checkpoint} (step {world.start.step}); same recipe and data as the run that "
                  "wrote it")
    try:
        with numpy_in_checkpoints():
            output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        watching.loss.close()
        watching.live.close()
        for done in plan.on_exit:
            done()
    if watching.loss.bad_step is not None:
        raise watch.diverged(watching.loss, world.output_dir)
    after = watching.ask("after training", trainer.model)
    return Trained(trainer, dict(output.metrics), before, after, watching.during.during if watching.during else [])
