"""The LM head fused with the cross-entropy (Liger Kernel; stage model).

A causal LM needs [tokens, vocabulary] logits; for 9k tokens of a 152k vocabulary that
is 2.8 GB in bfloat16 plus float32 copies for the softmax and its gradient, often more
than the rest of a LoRA step together. Liger's fused linear cross-entropy computes the
loss and its gradient chunk by chunk and never holds the logits. The chunks are up to
16x the hidden states' size (Liger's default is 1x: for Qwen2.5-0.5B that made 147 tiny
chunks a batch; +7.6% on the 7B shape at 4k, +22% on 2 GPUs with Qwen2.5-0.5B,
docs/performance.md). Only this model's forward changes (`_liger.py`).
"""

from __future__ import annotations

import functools
from typing import Any

from portaft import engines

from . import NotApplied, _liger

NAME = "fused_loss"
STAGE = "model"


def applies(training: Any) -> str | None:
    # Liger reads lm_head.weight without calling lm_head: a weight-sharding engine has not gathered it then
    # (FSDP2 hands Liger its shard, a DTensor: seen on one H100, 2026-12-07)
    if split := engines.sharded_weights(training.recipe):
        return f"not with {split}: the LM head's weight is gathered only when the head itself runs"
    return _liger.unusable_reason(training.base_model)


def apply(training: Any) -> str:
    fuse = _liger.fuse_loss
    note = "LM head and cross-entropy fused (Liger Kernel), the logits never held whole"
    if _liger.takes_chunk_mem_const():
        fuse = functools.partial(_liger.fuse_loss, chunk_mem_const=_liger.LARGER_CHUNKS)
        note += f", in chunks of up to {_liger.LARGER_CHUNKS}x the hidden states' size"
    else:
        note += " (in Liger's own chunks: this liger-kernel cannot be given larger ones)"
    try:
        fuse(training.base_model)
    except (ImportError, AttributeError, TypeError) as exc:  # another Liger version's API
        raise NotApplied(_liger.does_not_fit(exc)) from None
    return note
