"""Each step's samples shared out between several processes by their tokens (stage model).

Offered by no built-in backend yet: not timed on GPUs (bench/shares.py counts the
tokens). A backend offers it by listing this module in its SPEED_UPS, or a plugin
through the register_speed_ups hook. See portaft/data/shares.py for how.
"""

from __future__ import annotations

from typing import Any

NAME = "balanced_shares"
STAGE = "model"


def applies(training: Any) -> str | None:
    if training.processes == 1:
        return "one process"
    if training.recipe.packing:
        return "packed batches are shared out as they are packed"
    if not training.flattened:
        return "padded batches: a sample costs its batch's padded length, not its tokens"
    return None


def apply(training: Any) -> str:
    training.share_by_tokens = True
    return (f"each step's samples, drawn in a seeded order, shared out between the {training.processes} processes "
            "by their tokens (the same samples a step, so the same loss; a step waits for its busiest process)")
