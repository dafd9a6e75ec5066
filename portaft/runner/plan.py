"""Step 5, plan: how this run trains on its device, once the model is loaded.

First how the effective batch is split into micro-batches and whether layers are
checkpointed (`plan: auto`, execution.py); then the speed-ups of stage "model" that apply
(the backend's, then plugins'), each with a note, applied or not, which see that split;
then how batches are made, which some of them decide; then, on a device whose memory torch
counts, the probe step measures what a token keeps and may choose the split again (probe.py).
The plan's note comes last, with the split the run trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from portaft.speed_ups import MODEL, Training, apply_stage

from . import probe
from .batches import Batches, choose_batches
from .execution import Execution, apply_execution, describe, plan_execution
from .notes import Notes


@dataclass
class Plan:
    batches: Batches
    callbacks: list[Any]  # the speed-ups' TrainerCallbacks
    on_exit: list[Callable[[], None]]  # called once training ends or fails
    execution: Execution  # the micro-batch, accumulation and checkpointing, and why


def make_plan(resolved: Any, world: Any, model: Any, tokenizer: Any, built: Any, notes: Notes) -> Plan:
    recipe = resolved.recipe
    training = Training(recipe, resolved.device, resolved.processes, model=model, flattened=recipe.packing,
                        tokens=sum(built.lengths), samples=len(built.lengths))
    offered = {s.NAME: s for s in resolved.speed_ups}
    fused = {name for name in ("fused_loss", "fused_norms", "compiled_layers")
             if name in offered and offered[name].applies(training) is None}
    execution = plan_execution(recipe, world.args, model, built.lengths, resolved.processes,
                               fused_loss="fused_loss" in fused, fused_layers=bool(fused - {"fused_loss"}))
    apply_execution(execution, world.args, recipe, model)  # set now: the speed-ups see the split
    notes.add(*apply_stage(resolved.speed_ups, MODEL, training))
    batches = choose_batches(resolved, tokenizer, built.lengths, training)
    if probe.probe_and_replan(execution, model, batches.collator, built.dataset, built.lengths, world.args, recipe,
                              resolved.processes, probe.meter_for(world.args.device, model)):
        batches = choose_batches(resolved, tokenizer, built.lengths, training)  # a sampler sized by the micro-batch
    notes.add(*describe(execution))
    if batches.note:
        notes.add(batches.note)
    return Plan(batches, training.callbacks, training.on_exit, execution)
