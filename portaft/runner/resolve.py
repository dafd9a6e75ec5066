"""Step 1, resolve: the recipe read and checked at once, its backend chosen, and the
effective recipe that backend runs, with every change as a note.

The backend maps the portable settings onto its device (precision, optimizer, what the
device cannot do); the engines of train.fsdp / train.deepspeed are checked and
completed (portaft/engines/); its speed-ups of stage "settings" then change training settings the
recipe leaves unset; several processes get the backend's collective library; the
experiment trackers are made explicit and checked. All of it before anything loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from portaft import engines
from portaft.checks import bytecode
from portaft.data.packing import resolve_packing
from portaft.errors import UserError
from portaft.plugins import Plugins
from portaft.recipe import Recipe, RecipeSource
from portaft.recipe.defaults import apply_defaults
from portaft.speed_ups import SETTINGS, Training, apply_stage

from . import tracking
from .notes import Notes


@dataclass
class Resolved:
    recipe: Recipe  # the effective recipe: what the backend runs, every default explicit
    backend: Any  # portaft.protocols.Backend
    device: Any  # portaft.backends.Device: what the run's device is
    processes: int  # processes training together (torchrun's WORLD_SIZE)
    speed_ups: list[Any]  # the backend's and plugins', in the order they are tried
    plugins: Plugins
    tracking: tracking.Tracking


def resolve(source: RecipeSource, backend_name: str | None, overrides: Sequence[str], plugins: Plugins,
            notes: Notes) -> Resolved:
    recipe = plugins.read_recipe(source, overrides, surroundings=True)
    backend = plugins.choose_backend(recipe, backend_name)
    notes.say(f"backend {backend.name} (device {'cpu' if recipe.device == 'cpu' else backend.device_type})")
    if (slow_start := bytecode.recompiling()) is not None:  # printed, not recorded: the machine's, not the recipe's
        notes.say(slow_start)
    effective, changes = backend.resolve(recipe)
    effective.backend = backend.name
    notes.add(*changes, *apply_defaults(effective))
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    device = backend.device_for(effective)
    notes.add(*engines.complete(effective, device, processes, _name(source)))
    speed_ups, turned_off = _speed_ups(effective, [*backend.speed_ups(effective), *plugins.speed_ups(backend)],
                                       _every_speed_up_name(plugins))
    notes.add(*turned_off)
    notes.add(*apply_stage(speed_ups, SETTINGS, Training(effective, device, processes)))
    notes.add(*resolve_packing(effective), *_several_processes(effective, backend.name, device, processes))
    tracked = tracking.prepare(effective, plugins)
    notes.add(*tracked.notes)
    return Resolved(effective, backend, device, processes, speed_ups, plugins, tracked)


def _speed_ups(recipe: Recipe, offered: list[Any], known: set[str]) -> tuple[list[Any], list[str]]:
    """The offered speed-ups less those the recipe turns off (`speed_ups: {NAME: false}`), and a
    note for each turned off. A name that no installed backend or plugin offers is an error (a
    misspelt switch would leave the speed-up on without a word); one that only another backend
    offers is not, so the recipe stays portable."""
    names = [speed_up.NAME for speed_up in offered]
    unknown = sorted(set(recipe.speed_ups) - known)
    if unknown:
        raise UserError(f"speed_ups: {', '.join(unknown)}: no installed backend offers such a speed-up "
                        f"(known: {', '.join(sorted(known))}). Fix the name or remove the key.")
    off = {name for name, on in recipe.speed_ups.items() if not on}
    return ([speed_up for speed_up in offered if speed_up.NAME not in off],
            [f"speed-up {name}: not used (turned off: speed_ups.{name}: false)" for name in names if name in off])


def _every_speed_up_name(plugins: Plugins) -> set[str]:
    offered = [speed_up for backend in plugins.backends.values()
               for speed_up in (*getattr(backend, "SPEED_UPS", ()), *plugins.speed_ups(backend))]
    return {speed_up.NAME for speed_up in offered}


def _name(source: RecipeSource) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "recipe"


def _several_processes(recipe: Recipe, backend: str, device: Any, processes: int) -> list[str]:
    """DDP settings the recipe leaves unset, for runs of several processes."""
    if processes == 1:
        return []
    notes = []
    if not recipe.train.get("ddp_backend"):
        recipe.train["ddp_backend"] = device.collectives
        notes.append(f"train.ddp_backend: unset -> {device.collectives} ({processes} processes on {backend})")
    if recipe.finetune == "lora" and "ddp_find_unused_parameters" not in recipe.train:
        # transformers would say true for a peft model: DDP then walks the whole autograd
        # graph after every backward looking for weights without gradients (as LLaMA-Factory does)
        recipe.train["ddp_find_unused_parameters"] = False
        notes.append("train.ddp_find_unused_parameters: unset -> false (every adapter weight gets a gradient in "
                     "every step, so DDP need not search the graph for unused ones)")
    return notes
