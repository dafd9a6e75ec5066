"""Attention for flattened batches on Ascend: torch_npu.npu_fusion_attention with the TND
layout (stage model), the Ascend counterpart of varlen_attention.py.

A flattened (padding-free or packed) batch is one row of samples. Its tokens go to the
operator as [tokens, heads, head_dim] (layout "TND") with the samples' ends as cumulative
lengths (`actual_seq_qlen` / `actual_seq_kvlen`: 3, 8, 12 for samples of 3, 5 and 4
tokens), and causal masking within each sample through sparse_mode 3 with the operator's
compressed 2048 x 2048 mask (True above the diagonal). The sample bounds come from the
batch (`cu_seq_lens_q` from portaft's flattening collator, else the restarts of
position_ids), as for the CUDA kernels.

Where the installed transformers has `integrations/npu_flash_attention.py` bound to
torch_npu, its `npu_flash_attn_varlen_func` makes the call (the same arguments); else
portaft's own call below. Padded batches (an attention mask) and generation with a cache
go to sdpa.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from .npu_ops import atlas_a2_problem, missing, op
from .varlen_attention import _mask, _rows, sequence_bounds

NAME = "npu_fusion_attention"
STAGE = "model"
ATTENTION = "portaft_npu_varlen"  # no "flash" in it: transformers would look for a flash-attn package
SPARSE_MODE = 3  # rightDownCausal; for a sample attending to itself the same as 2 (leftUpCausal)
COMPRESSED_MASK = 2048  # the operator's compressed causal mask is always 2048 x 2048
_masks: dict[Any, Any] = {}


def applies(training: Any) -> str | None:
    if not training.flattened:
        return "the batches are padded, not flattened"
    if training.recipe.model.attn_implementation != "auto":
        return f"the recipe sets model.attn_implementation: {training.recipe.model.attn_implementation}"
    model = training.base_model
    if not hasattr(model, "set_attn_implementation"):
        return "this transformers cannot change a loaded model's attention"
    config = model.config
    if set(getattr(config, "layer_types", None) or ["full_attention"]) != {"full_attention"} or (
            getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)):
        return "the model uses sliding-window attention"
    return missing("npu_fusion_attention") or atlas_a2_problem(training, "npu_fusion_attention")


def apply(training: Any) -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from . import NotApplied

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, _mask)
    model = training.base_model
    model.set_attn_implementation(ATTENTION)
    if model.config._attn_implementation != ATTENTION:
        raise NotApplied("the model's code does not take transformers' attention functions")
    route = ("transformers' npu_flash_attn_varlen_func" if transformers_varlen() is not None
             else "portaft's own call (this transformers has no NPU flash-attention integration bound to torch_npu)")
    return (f"each sample of a flattened batch attends to itself only: torch_npu.npu_fusion_attention, layout TND, "
            f"cumulative sample lengths, sparse_mode {SPARSE_MODE} with the compressed causal mask; through {route}")


def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
              scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention-function contract: q/k/v [batch, heads, length, dim] in,
    [batch, length, heads, dim] out."""
    batch, heads, length, dim = query.shape
    if attention_mask is not None or key.shape[2] != length:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    cu_seq_lens, _ = sequence_bounds(batch, length, query.device, kwargs)
    scale = dim ** -0.5 if scaling is None else scaling
    out = varlen(_rows(query), _rows(key), _rows(value), cu_seq_lens, dropout, scale)
    return out.view(batch, length, heads, dim), None


def varlen(query: Any, key: Any, value: Any, cu_seq_lens: Any, dropout: float, scale: float) -> Any:
    """Causal attention of each sample alone: q [tokens, heads, dim], k/v [tokens, kv_heads, dim]."""
    through_transformers = transformers_varlen()
    if through_transformers is not None:
        return through_transformers(query, key, value, cu_seq_lens, cu_seq_lens, dropout_p=dropout,
                                    softmax_scale=scale, causal=True)
    ends = tuple(cu_seq_lens[1:].tolist())  # the operator takes host-side cumulative lengths
    return op("npu_fusion_attention")(
        query, key, value, query.shape[1], "TND", pse=None, padding_mask=None, atten_mask=causal_mask(query.device),
        scale=scale, keep_prob=1.0 - dropout, actual_seq_qlen=ends, actual_seq_kvlen=ends,
        sparse_mode=SPARSE_MODE)[0]


def causal_mask(device: Any) -> Any:
    """The compressed causal mask sparse_mode 2 and 3 take: True (masked) above the diagonal."""
    if device not in _masks:
        _masks[device] = torch.triu(torch.ones(COMPRESSED_MASK, COMPRESSED_MASK, dtype=torch.bool, device=device),
                                    diagonal=1)
    return _masks[device]


def transformers_varlen() -> Any:
    """transformers' npu_flash_attn_varlen_func where its module is bound to torch_npu's operator."""
    try:
        integration = importlib.import_module("transformers.integrations.npu_flash_attention")
    except Exception:  # noqa: BLE001 (older transformers: no such module; or its import fails)
        return None
    if getattr(integration, "npu_fusion_attention", None) is None:
        return None
    return getattr(integration, "npu_flash_attn_varlen_func", None)
