"""The MLP's SwiGLU as one Ascend operator, torch_npu.npu_swiglu (stage model).

Llama-style MLPs compute down(silu(gate(x)) * up(x)). `torch_npu.npu_swiglu(t, dim=-1)`
splits t in two halves A, B along dim and returns silu(A) * B, so the gate's output goes
first: down(npu_swiglu(cat(gate(x), up(x)), dim=-1)), as LLaMA-Factory and ms-swift call it.
Only this model's MLP modules change (their `forward`); Llama/Qwen2/Qwen3/Mistral name the
projections gate_proj/up_proj/down_proj, InternLM2 w1/w3/w2.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .npu_ops import atlas_a2_problem, family_problem, missing, op

NAME = "npu_swiglu"
STAGE = "model"
PROJECTIONS = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))  # (gate, up, down)


def applies(training: Any) -> str | None:
    model = training.base_model
    act = getattr(model.config, "hidden_act", None)
    return (missing("npu_swiglu") or atlas_a2_problem(training, "npu_swiglu") or family_problem(model)
            or (None if act in ("silu", "swish") else f"the MLP's activation is {act}, not SiLU")
            or (None if mlps(model) else "the model has no gate/up/down MLP modules portaft knows"))


def apply(training: Any) -> str:
    swiglu = op("npu_swiglu")
    found = mlps(training.base_model)
    for module, names in found:
        module.forward = functools.partial(fused_forward, module, swiglu=swiglu, names=names)
    return f"{len(found)} MLPs' SiLU gate through torch_npu.npu_swiglu (one operator each)"


def mlps(model: Any) -> list[tuple[Any, tuple[str, str, str]]]:
    found = []
    for module in model.modules():
        for names in PROJECTIONS:
            if all(hasattr(module, name) for name in names) and hasattr(module, "act_fn"):
                found.append((module, names))
                break
    return found


def fused_forward(module: Any, x: Any, *, swiglu: Any, names: tuple[str, str, str]) -> Any:
    gate, up, down = (getattr(module, name) for name in names)
    return down(swiglu(torch.cat((gate(x), up(x)), dim=-1), dim=-1))
