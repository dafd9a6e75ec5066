"""The spine of a run: its seven steps, each a function in the module named after it.

    resolve.py   1. the recipe read and checked, the backend, the effective recipe + notes
    world.py     2. processes, training arguments and device, where training starts
    dataset.py   3. the tokenizer and the data, as training sees it
    model.py     4. the model through the backend's loader, the adapter
    plan.py      5. the speed-ups that apply, how batches are made (batches.py)
    train.py     6. the backend's Trainer, fed and watched (watch.py), resumed if it can be
    save.py      7. adapter, tokenizer, effective recipe, run record, report
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from portaft.plugins import get_plugins
from portaft.recipe import RecipeSource

from .dataset import read_data
from .livelog import library_warnings
from .model import load_model
from .notes import Notes
from .plan import make_plan
from .resolve import resolve
from .save import RunResult, already_finished, save
from .train import train
from .world import enter


def run(
    recipe: RecipeSource,
    backend: str | None = None,
    overrides: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> RunResult:
    """Fine-tune as the recipe says; return where the adapter went and what happened.

    `recipe` is a YAML path, a dict or a Recipe; `backend` overrides the recipe's.
    """
    started = time.time()
    notes = Notes(echo)
    with library_warnings():  # known ones go to the run's portaft_log.jsonl, not the terminal
        resolved = resolve(recipe, backend, overrides, get_plugins(), notes)
        world = enter(resolved, notes)
        if world.start.finished is not None:
            return already_finished(resolved, world, notes)
        tokenizer, built = read_data(resolved, world, notes)
        model = load_model(resolved, tokenizer, notes)
        plan = make_plan(resolved, world, model, tokenizer, built, notes)
        trained = train(resolved, world, model, tokenizer, built, plan, notes)
        return save(resolved, world, tokenizer, built, trained, notes, started)


__all__ = ["RunResult", "run"]
