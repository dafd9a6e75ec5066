"""varlen_attention without attention masks, under several processes (stage model).

transformers then builds no masks and skips its packed-sequence check, a device sync at
the start of every forward. With several processes that sync also waits for the other
processes' collectives: measured faster on 2 GPUs, not with one process
(docs/performance.md), so it applies only where torchrun started several. Without masks
transformers also drops padding masks: generation is right only for unpadded prompts,
which are the only ones portaft generates from.
"""

from __future__ import annotations

from typing import Any

from . import varlen_attention

NAME = "attention_without_masks"
STAGE = "model"


def applies(training: Any) -> str | None:
    if varlen_attention.NAME not in training.applied:
        return f"it serves {varlen_attention.NAME}, which this run does not use"
    if training.processes == 1:
        return "one process: measured no faster than with masks (docs/performance.md)"
    return None


def apply(training: Any) -> str:
    varlen_attention.use(training.base_model, masks=False, cudnn="cudnn_attention" in training.applied)
    return "transformers builds no attention masks (no device sync at the start of each forward)"
