"""Step 5, plan: how this run trains on its device, once the model is loaded.

The speed-ups of stage "model" that apply (the backend's, then plugins'), each with a
note, applied or not; then how batches are made, which some of them decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from portaft.speed_ups import MODEL, Training, apply_stage

from .batches import Batches, choose_batches
from .notes import Notes


@dataclass
class Plan:
    batches: Batches
    callbacks: list[Any]  # the speed-ups' TrainerCallbacks
    on_exit: list[Callable[[], None]]  # called once training ends or fails


def make_plan(resolved: Any, model: Any, tokenizer: Any, built: Any, notes: Notes) -> Plan:
    recipe = resolved.recipe
    training = Training(recipe, resolved.device, resolved.processes, model=model, flattened=recipe.packing)
    notes.add(*apply_stage(resolved.speed_ups, MODEL, training))
    batches = choose_batches(resolved, tokenizer, built.lengths, training)
    if batches.note:
        notes.add(batches.note)
    return Plan(batches, training.callbacks, training.on_exit)
