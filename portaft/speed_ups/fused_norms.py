"""RMSNorm and the SwiGLU activation as one kernel each (Liger Kernel; stage model).

Instead of a chain of element-wise ops with float32 copies kept for the backward pass.
Only this model's decoder modules change (`_liger.py`). Compiled layers fuse these
themselves, and torch.compile cannot trace Liger's RMSNorm, so with compiled_layers this
one stays off.
"""

from __future__ import annotations

from typing import Any

from . import NotApplied, _liger, compiled_layers

NAME = "fused_norms"
STAGE = "model"


def applies(training: Any) -> str | None:
    if compiled_layers.NAME in training.applied:
        return "the compiled layers fuse their norms themselves (torch.compile cannot trace Liger's RMSNorm)"
    return _liger.unusable_reason(training.base_model)


def apply(training: Any) -> str:
    try:
        _liger.fuse_norms_and_mlp(training.base_model)
    except (ImportError, AttributeError, TypeError) as exc:  # another Liger version's API
        raise NotApplied(_liger.does_not_fit(exc)) from None
    return "RMSNorm and the SwiGLU activation fused (Liger Kernel)"
