"""Speed-ups: one module each, each keeping the loss the same, offered by the backend that has them.

A speed-up module has `NAME`, `STAGE`, `applies(training) -> reason or None` and
`apply(training) -> note` (`portaft.protocols.SpeedUp`). Stage "settings" speed-ups change
the effective recipe's training settings when the recipe is resolved, before anything
loads; stage "model" ones change the loaded model (kernels, compiled layers), how batches
are made, or add callbacks, in the run's plan step. `apply_stage` tries each in order and
returns one note per speed-up, applied or not, with the reason: the run prints them and
keeps them in its record. Plugins add speed-ups through the `register_speed_ups` hook.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from portaft.backends.device import Device
    from portaft.recipe import Recipe

SETTINGS, MODEL = "settings", "model"


class NotApplied(Exception):
    """Raised by `apply` when the change turned out not to take (what applies() could not
    know before trying); the module has undone what it started. The message says why."""


@dataclass
class Training:
    """What a speed-up reads and may change."""

    recipe: Recipe  # the effective recipe (a settings speed-up may change recipe.train)
    device: Device  # what the run's device is
    processes: int  # how many processes train together (torchrun's WORLD_SIZE)
    model: Any = None  # model stage: what the Trainer trains (the adapter applied), else None
    flattened: bool = False  # each batch's samples in one row without pad tokens (packing sets it too)
    share_by_tokens: bool = False  # several processes: each step's samples shared out by their tokens
    tokens: int = 0  # model stage: the tokens of one epoch of the data (all processes')
    samples: int = 0  # model stage: the samples of one epoch of the data
    callbacks: list[Any] = field(default_factory=list)  # TrainerCallbacks to add to the Trainer
    on_exit: list[Callable[[], None]] = field(default_factory=list)  # called once training ends or fails
    applied: list[str] = field(default_factory=list)  # NAMEs applied so far, in order

    @property
    def base_model(self) -> Any:
        """The model under the adapter (the model itself when there is none)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model


def apply_stage(speed_ups: Sequence[Any], stage: str, training: Training) -> list[str]:
    """Apply the speed-ups of `stage` that apply, in order; one note for each one tried."""
    notes = []
    for speed_up in speed_ups:
        if speed_up.STAGE != stage:
            continue
        reason = speed_up.applies(training)
        if reason is None:
            try:
                done = speed_up.apply(training)
            except NotApplied as exc:
                reason = str(exc)
            else:
                notes.append(f"speed-up {speed_up.NAME}: {done}")
                training.applied.append(speed_up.NAME)
        if reason is not None:
            notes.append(f"speed-up {speed_up.NAME}: not used ({reason})")
    return notes
