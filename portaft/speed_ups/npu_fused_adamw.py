"""Ascend's fused AdamW, torch_npu.optim.NpuFusedAdamW (stage settings).

transformers trains with it under `optim: adamw_torch_npu_fused`. Where the recipe leaves
train.optim unset, transformers would pick torch's fused AdamW, which has no NPU kernels;
this sets Ascend's. A recipe that names another optimizer keeps it (`adamw_torch_fused` is
mapped to Ascend's when the recipe is resolved, with its own note).
"""

from __future__ import annotations

from typing import Any

from .npu_ops import missing

NAME = "npu_fused_adamw"
STAGE = "settings"
OPTIM = "adamw_torch_npu_fused"


def applies(training: Any) -> str | None:
    problem = missing("optim.NpuFusedAdamW")
    if problem is not None:
        return problem
    optim = _optim(training.recipe.train)
    if optim not in (None, OPTIM):
        return f"the recipe sets train.optim: {optim}"
    return None


def apply(training: Any) -> str:
    train = training.recipe.train
    if _optim(train) == OPTIM:
        return f"train.optim: {OPTIM} (torch_npu.optim.NpuFusedAdamW: one fused update for all parameters)"
    train["optim"] = OPTIM
    return f"train.optim: unset -> {OPTIM} (torch_npu.optim.NpuFusedAdamW: one fused update for all parameters)"


def _optim(train: dict) -> str | None:
    optim = train.get("optim")
    return None if optim is None else str(getattr(optim, "value", optim))
