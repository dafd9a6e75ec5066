"""Objects alive after set-up frozen out of Python's garbage collector (stage model).

Every backend offers it: it changes the host's work, not the model.
"""

from __future__ import annotations

import gc
from typing import Any

from transformers.trainer_callback import TrainerCallback

NAME = "frozen_objects"
STAGE = "model"


def applies(training: Any) -> str | None:
    return None if gc.isenabled() else "this process turned Python's garbage collector off"


def apply(training: Any) -> str:
    frozen = FrozenLongLivedObjects()
    training.callbacks.append(frozen)
    training.on_exit.append(frozen.unfreeze)  # when training ends or fails
    return ("the objects alive after set-up and the first 3 steps frozen out of Python's garbage collector "
            "(gc.freeze): a full collection walks them all, about 300 ms on whichever step it falls")


class FrozenLongLivedObjects(TrainerCallback):
    """Python's full garbage collection walks every object the process holds: with torch,
    transformers, a 7B-shaped LoRA model and no compiled layers yet, 552k objects and about 300 ms
    on a 2-core CPU, on whichever step it falls, while an accelerator waits for the host (one
    fell on step 28 of a Qwen2.5-0.5B-shaped run on an H200: 534 ms, where a step takes 190). The
    objects alive once set-up and the first steps (where layers compile) are done are frozen out
    of it (gc.freeze); what training allocates afterwards is collected as usual. `unfreeze`,
    which the runner calls once training ends or fails, gives them back. A process that turned
    the collector off is left alone. One that froze objects before gets them back too (gc has
    no way to unfreeze only some): a Python may start with some frozen (the H200 machine's 3.12
    started with 375), and that must not turn this off."""

    FREEZE_UNTIL_STEP = 3  # compiled layers compile in step 1, and again for a new shape soon after

    def __init__(self) -> None:
        self.active = gc.isenabled()
        self.steps = 0  # this process's steps: a resumed run compiles in its first steps too

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._freeze()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.steps += 1
        if self.steps <= self.FREEZE_UNTIL_STEP:
            self._freeze()

    def _freeze(self) -> None:
        if self.active:
            gc.collect()  # garbage of set-up is freed, not frozen; after the first freeze this is quick
            gc.freeze()

    def unfreeze(self) -> None:
        if self.active:
            gc.unfreeze()
