"""RMSNorm as one Ascend operator, torch_npu.npu_rms_norm (stage model).

Each RMSNorm module of this model (Llama/Qwen2/Qwen3/Mistral/InternLM2: weight * x / rms(x))
computes through `torch_npu.npu_rms_norm(x, weight, epsilon)[0]` instead of five
element-wise operators with a float32 copy kept for the backward pass. Only this model's
modules change (their `forward`), never the class. A norm whose weight dtype differs from
its input's (float32 weights under autocast) keeps transformers' code: the operator takes
one dtype.
"""

from __future__ import annotations

import functools
from typing import Any

from .npu_ops import family_problem, missing, op

NAME = "npu_rms_norm"
STAGE = "model"


def applies(training: Any) -> str | None:
    return missing("npu_rms_norm") or family_problem(training.base_model) or (
        None if norms(training.base_model) else "the model has no RMSNorm modules portaft knows")


def apply(training: Any) -> str:
    rms_norm = op("npu_rms_norm")
    found = norms(training.base_model)
    for module in found:
        module.forward = functools.partial(fused_forward, module, rms_norm=rms_norm, original=module.forward)
    return f"{len(found)} RMSNorm modules through torch_npu.npu_rms_norm (one operator each)"


def norms(model: Any) -> list[Any]:
    return [m for m in model.modules() if type(m).__name__.endswith("RMSNorm") and _epsilon(m) is not None
            and getattr(getattr(m, "weight", None), "dim", lambda: 0)() == 1]


def fused_forward(module: Any, hidden_states: Any, *, rms_norm: Any, original: Any) -> Any:
    if module.weight.dtype != hidden_states.dtype:
        return original(hidden_states)
    return rms_norm(hidden_states, module.weight, epsilon=_epsilon(module))[0]


def _epsilon(module: Any) -> float | None:
    return getattr(module, "variance_epsilon", getattr(module, "eps", None))
