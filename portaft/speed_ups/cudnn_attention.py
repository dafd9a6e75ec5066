"""cuDNN's fused attention for batches whose samples all have one length (stage model).

A flattened batch of full-length sequences (a 4k batch of long documents cut at
max_length) is an ordinary dense batch: cuDNN's fused attention (Hopper kernels,
`_cudnn_op.py`) computes it faster than FlashAttention-2 (bench/attention.py). With this
speed-up, varlen_attention's function sends such batches to cuDNN and every other batch
to the flash kernels; which is which is read from shapes alone (no device sync).
"""

from __future__ import annotations

from typing import Any

import torch

from . import varlen_attention

NAME = "cudnn_attention"
STAGE = "model"


def applies(training: Any) -> str | None:
    if varlen_attention.NAME not in training.applied:
        return f"it serves {varlen_attention.NAME}, which this run does not use"
    return unusable_reason(training.base_model)


def apply(training: Any) -> str:
    without_masks = "attention_without_masks" in training.applied
    varlen_attention.use(training.base_model, masks=not without_masks, cudnn=True)
    return "batches of same-length samples take cuDNN's fused attention"


def unusable_reason(model: Any) -> str | None:
    """Why batches of same-length samples cannot go to cuDNN's fused attention here; None when they can."""
    config = model.config
    if not torch.backends.cudnn.is_available() or (torch.backends.cudnn.version() or 0) < 90000:
        return "cuDNN 9 or newer is not there"
    if not hasattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention") or not hasattr(torch.library, "custom_op"):
        return "this torch has no cuDNN attention or cannot register custom ops (torch 2.4 or newer has both)"
    heads = config.num_attention_heads
    if (getattr(config, "num_key_value_heads", None) or heads) != heads:
        return "grouped-query heads"
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if head_dim > 128:
        return f"head dimension {head_dim} (cuDNN's training kernels take up to 128)"
    return None
