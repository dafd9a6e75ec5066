"""Rotary position embedding as one Ascend operator, torch_npu.npu_rotary_mul (stage model).

transformers' Llama-style attention calls its modeling module's `apply_rotary_pos_emb(q, k,
cos, sin)`, which computes x * cos + rotate_half(x) * sin: halves rotated, not interleaved
pairs. `torch_npu.npu_rotary_mul(x, r1, r2)` computes exactly that in its default "half"
mode. The function is a module global, not a method, so no model instance owns it: the
modeling module's `apply_rotary_pos_emb` is wrapped once by a dispatcher that calls the
operator only while an attention module of a model this speed-up was applied to runs (a
forward pre-hook and hook on each of them mark it), and transformers' own function in
every other case: other models in the process, an old signature (position_ids), partial
rotary dimensions. Gradient checkpointing re-runs the hooks with the forward, so the
recomputed graph is the same one.
"""

from __future__ import annotations

import contextvars
import functools
import sys
from typing import Any

from .npu_ops import family_problem, missing, op

NAME = "npu_rotary_mul"
STAGE = "model"
GLOBAL = "apply_rotary_pos_emb"

# the rotary operator while an attention module of a fused model runs; None otherwise
_running: contextvars.ContextVar[Any] = contextvars.ContextVar("portaft_npu_rotary", default=None)


def applies(training: Any) -> str | None:
    return missing("npu_rotary_mul") or family_problem(training.base_model) or (
        None if attention_modules(training.base_model) else
        f"the model's attention does not call a module-level {GLOBAL}(q, k, cos, sin)")


def apply(training: Any) -> str:
    rotary = op("npu_rotary_mul")
    found = attention_modules(training.base_model)
    for module in found:
        install(sys.modules[type(module).__module__])
        module.register_forward_pre_hook(functools.partial(_enter, rotary=rotary))
        module.register_forward_hook(_leave, always_call=True)
    return f"the rotary embedding of {len(found)} attention modules through torch_npu.npu_rotary_mul (rotate-half)"


def attention_modules(model: Any) -> list[Any]:
    return [m for m in model.modules() if type(m).__name__.endswith("Attention")
            and callable(getattr(sys.modules.get(type(m).__module__), GLOBAL, None))]


def install(modeling: Any) -> None:
    """Wrap `modeling.apply_rotary_pos_emb` in the dispatcher (once)."""
    original = getattr(modeling, GLOBAL)
    if getattr(original, "portaft_original", None) is None:
        setattr(modeling, GLOBAL, dispatcher(original))


def dispatcher(original: Any) -> Any:
    @functools.wraps(original)
    def apply_rotary_pos_emb(q: Any, k: Any, cos: Any, sin: Any, *args: Any, **kwargs: Any) -> Any:
        rotary = _running.get()
        if rotary is None or args or set(kwargs) - {"unsqueeze_dim"} or cos.shape[-1] != q.shape[-1]:
            return original(q, k, cos, sin, *args, **kwargs)
        unsqueeze_dim = kwargs.get("unsqueeze_dim", 1)
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return rotary(q, cos, sin), rotary(k, cos, sin)

    apply_rotary_pos_emb.portaft_original = original
    return apply_rotary_pos_emb


def _enter(module: Any, args: Any, *, rotary: Any) -> None:
    module.__dict__.setdefault("_portaft_rotary_tokens", []).append(_running.set(rotary))


def _leave(module: Any, args: Any, output: Any) -> None:
    tokens = module.__dict__.get("_portaft_rotary_tokens")
    if tokens:
        _running.reset(tokens.pop())
