"""Padding-free batches (stage model): each batch's samples flattened into one row.

The same samples and the same loss as padded batches (tests: test_packing.py), without
computing pad tokens: transformers' DataCollatorWithFlattening gives each sample its own
position ids, which the model's mask code (or varlen_attention) reads as sample bounds.
"""

from __future__ import annotations

from typing import Any

NAME = "padding_free"
STAGE = "model"


def applies(training: Any) -> str | None:
    from portaft.data.packing import packing_supported

    if training.recipe.packing:
        return "packing: true flattens the batches already"
    return packing_supported()


def apply(training: Any) -> str:
    training.flattened = True
    return ("each batch's samples flattened into one row with their own position ids: no pad tokens computed, "
            "the same loss as padded")
