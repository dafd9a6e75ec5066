"""Liger Kernel's fused Triton kernels, on one model instance only.

- The loss: a causal LM needs [tokens, vocabulary] logits; for 9k tokens of a 152k
  vocabulary that is 2.8 GB in bfloat16 plus float32 copies for the softmax and its
  gradient, often more than the rest of a LoRA step together. Liger's fused linear
  cross-entropy computes the loss and its gradient chunk by chunk and never holds the
  logits.
- RMSNorm and the SwiGLU MLP's activation: one kernel each instead of a chain of
  element-wise ops with float32 copies kept for the backward pass.

Liger's `apply_liger_kernel_to_*` functions also replace transformers' classes and
functions for the whole process, which would leak into any later model of the same
process (portaft parity, a CPU run in the test suite). Here only this model's modules
are changed, with Liger's own per-instance helpers and its forward for the
architecture, as those functions do to an instance.
"""

from __future__ import annotations

import importlib
import importlib.util
import types
from typing import Any

# architectures made of the plain decoder (RMSNorm, SwiGLU MLP) + LM head + shifted cross-entropy
LIGER_FORWARDS = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "mistral"}
INSTALL = "pip install 'liger-kernel>=0.8' (or portaft[cuda])"


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


def fuse_loss(model: Any) -> None:
    """Replace `model.forward` (this instance only) by Liger's forward for its architecture."""
    module = importlib.import_module(f"liger_kernel.transformers.model.{LIGER_FORWARDS[model.config.model_type]}")
    model.forward = types.MethodType(module.lce_forward, model)


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
