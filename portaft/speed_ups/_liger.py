"""Liger Kernel's fused Triton kernels on one model instance only (fused_loss, fused_norms).

Liger's `apply_liger_kernel_to_*` functions also replace transformers' classes and
functions for the whole process, which would leak into any later model of the same
process (portaft parity, a CPU run in the test suite). Here only this model's modules
are changed, with Liger's own per-instance helpers and its forward for the
architecture, as those functions do to an instance.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import types
from typing import Any

# architectures made of the plain decoder (RMSNorm, SwiGLU MLP) + LM head + shifted cross-entropy
LIGER_FORWARDS = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "mistral"}
INSTALL = "pip install 'liger-kernel>=0.8' (or portaft[cuda])"


def does_not_fit(exc: Exception) -> str:
    return f"this liger-kernel does not fit: {type(exc).__name__}: {exc}; {INSTALL}"


def unusable_reason(model: Any) -> str | None:
    """Why Liger's kernels cannot be used on this model here; None when they can."""
    model_type = getattr(model.config, "model_type", "")
    if model_type not in LIGER_FORWARDS:
        return f"no fused kernels for {model_type or 'this'} models yet (only {', '.join(sorted(LIGER_FORWARDS))})"
    if importlib.util.find_spec("liger_kernel") is None:
        return f"liger-kernel is not installed ({INSTALL})"
    if getattr(model.config, "pretraining_tp", 1) > 1:
        return "pretraining_tp > 1"
    return None


# Liger holds at most chunk_mem_const x the hidden states' size of logits at once (its
# default 1). A small hidden size under a large vocabulary then makes tiny chunks: for
# Qwen2.5-0.5B (896, 151,936) 64 tokens, 147 chunks in a 9.4k-token batch, each with its own
# matmuls reading the whole LM head and its own kernels (29% of that model's GPU time and
# 14% of its host's a step, steps/10-.../profiles-with-masks). 16 is what Liger
# uses for its fused KL loss: 1,024-token chunks there, 2 chunks for a 7B batch at 4k.
LARGER_CHUNKS = 16


def fuse_loss(model: Any, chunk_mem_const: int | None = None) -> None:
    """Replace `model.forward` (this instance only) by Liger's forward for its architecture;
    `chunk_mem_const`: Liger's logits budget (None: Liger's default)."""
    module = importlib.import_module(f"liger_kernel.transformers.model.{LIGER_FORWARDS[model.config.model_type]}")
    forward = module.lce_forward
    if chunk_mem_const is not None:  # see takes_chunk_mem_const
        # Liger's forward hands its keyword arguments to the loss, which keeps the ones it takes
        # (and to the decoder, whose attention functions take any and use none of them)
        forward = functools.partial(forward, chunk_mem_const=chunk_mem_const)
    model.forward = types.MethodType(forward, model)


def takes_chunk_mem_const() -> bool:
    """Whether this Liger's fused cross-entropy passes chunk_mem_const on to its kernel (0.8.5
    does); an older one would drop it without a word."""
    import inspect

    try:
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction
        from liger_kernel.transformers import functional
    except ImportError:
        return False
    return bool("chunk_mem_const" in inspect.signature(functional.liger_fused_linear_cross_entropy).parameters
            and getattr(LigerFusedLinearCrossEntropyFunction, "supports_inner_impl_dispatch", False))


def fuse_norms_and_mlp(model: Any) -> None:
    """Liger's RMSNorm and SwiGLU on this model's decoder modules (instance methods only)."""
    from liger_kernel.transformers.monkey_patch import _patch_rms_norm_module, _patch_swiglu_module
    from liger_kernel.transformers.swiglu import LigerSwiGLUMLP

    decoder = getattr(model, model.base_model_prefix, model)
    _patch_rms_norm_module(decoder.norm)
    for layer in decoder.layers:
        _patch_swiglu_module(layer.mlp, LigerSwiGLUMLP)
        _patch_rms_norm_module(layer.input_layernorm)
        _patch_rms_norm_module(layer.post_attention_layernorm)
