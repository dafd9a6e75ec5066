"""Attention for flattened (padding-free or packed) batches: each sample attends to itself only.

transformers' sdpa path turns a flattened row into one [L, L] block-diagonal mask and
runs attention over the whole row: with 32 samples of ~300 tokens that is ~30x the
work of attending within each sample, and sdpa cannot use its flash kernels with a
mask. flash-attn's varlen kernels do the per-sample work, but the flash-attn package
is rarely installed and often does not build. torch ships the same FlashAttention-2
kernels (`aten::_flash_attention_forward`, with autograd, with variable-length
sequences given as cumulative lengths): this module registers them as a transformers
attention implementation, so any model written against transformers'
AttentionInterface (Llama, Qwen2/3, Mistral, ...) uses them without patching a class.

The sample boundaries come from the batch: portaft's flattening collator adds
transformers' `cu_seq_lens_q/k` and `max_length_q/k` (computed on the CPU, so no
device sync), which the model passes down to attention. Anything else (generation
with a padded batch, a KV cache) goes to sdpa with sdpa's own mask.

Where every sample of a batch has the same length (full-length sequences: a 4k batch
of long documents cut at max_length), the batch is an ordinary dense one, and cuDNN's
fused attention (Hopper kernels; `_cudnn_op.py`) computes the same attention faster
than FlashAttention-2 (bench/attention.py); the cudnn_attention speed-up switches it on.
Whether a batch is one is read from shapes alone: no device sync.

The speed-up (stage model): flattened batches, `model.attn_implementation: auto`, a GPU
with flash kernels and a model written against AttentionInterface.
"""

from __future__ import annotations

import functools
from typing import Any

import torch  # portaft's own dependency: only vendor libraries are imported lazily

from portaft.compat import autocast_enabled

ATTENTION = "portaft_varlen"  # no "flash" in it: transformers would look for a flash-attn package
# the same attention with no mask function: transformers then builds no mask and skips its
# packed-sequence check (a device sync at the start of every forward), but it also drops
# padding masks, so generation is right only for unpadded prompts (portaft's are)
ATTENTION_WITHOUT_MASKS = "portaft_varlen_without_masks"
# suffix of the names whose batches all go to the flash kernels, cuDNN's never (a name with
# "flash" in it would send transformers looking for a flash-attn package, as above)
FLASH_ONLY = "_without_cudnn"

NAME = "varlen_attention"
STAGE = "model"


def applies(training: Any) -> str | None:
    if not training.flattened:
        return "the batches are padded, not flattened"
    if training.recipe.model.attn_implementation != "auto":
        return f"the recipe sets model.attn_implementation: {training.recipe.model.attn_implementation}"
    return unusable_reason(training.base_model)


def apply(training: Any) -> str:
    use(training.base_model, masks=True, cudnn=False)
    return ("each sample of a flattened batch attends to itself only (torch's flash kernels, variable-length), "
            "not the whole batch under a mask")


def use(model: Any, masks: bool, cudnn: bool) -> None:
    """Give `model` this attention (register's name for masks and cudnn)."""
    from . import NotApplied

    name = register(masks, cudnn)
    model.set_attn_implementation(name)
    if model.config._attn_implementation != name:
        raise NotApplied("the model's code does not take transformers' attention functions")


def unusable_reason(model: Any) -> str | None:
    """Why this model cannot use the varlen flash kernels here; None when it can."""
    config, dtype = model.config, model.dtype
    if not hasattr(model, "set_attn_implementation"):
        return "this transformers cannot change a loaded model's attention"
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        return "torch's flash kernels need an Ampere or newer GPU"
    if not torch.backends.cuda.is_flash_attention_available():
        return "this torch build has no flash attention kernels"
    if dtype not in (torch.bfloat16, torch.float16):
        return f"flash kernels compute in bfloat16 or float16, the model is {dtype}"
    heads = getattr(config, "num_attention_heads", None)
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
    if not head_dim or head_dim > 256 or head_dim % 8:
        return f"head dimension {head_dim} (flash kernels take multiples of 8 up to 256)"
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"} or (getattr(config, "sliding_window", None)
                                             and getattr(config, "use_sliding_window", True)):
        return "the model uses sliding-window attention"
    if getattr(config, "attn_logit_softcapping", None) or getattr(config, "model_type", "") in ("gpt_oss",):
        return "the model changes attention scores (softcapping or sinks)"
    return None


def register(masks: bool = True, cudnn: bool = True) -> str:
    """Make ATTENTION (masks=False: ATTENTION_WITHOUT_MASKS; cudnn=False: + FLASH_ONLY) a
    transformers attention implementation (idempotent); return the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    name = (ATTENTION if masks else ATTENTION_WITHOUT_MASKS) + ("" if cudnn else FLASH_ONLY)
    AttentionInterface.register(name, attention if cudnn else flash_only_attention)
    if masks:
        AttentionMaskInterface.register(name, _mask)
    return name


def _mask(*args: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
    """No mask for unpadded rows (the kernels are causal per sample); sdpa's for padded ones."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
              scaling: float | None = None, cudnn: bool = True, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention-function contract: q/k/v [batch, heads, length, dim] in,
    [batch, length, heads, dim] out. `cudnn`: batches of same-length samples go to cuDNN."""
    batch, heads, length, dim = query.shape
    if attention_mask is not None or key.shape[2] != length or not on_flash_device(query):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    cu_seq_lens, max_length = sequence_bounds(batch, length, query.device, kwargs)
    dtype = query.dtype
    if dtype not in (torch.bfloat16, torch.float16):  # float32 weights under autocast: compute as autocast does
        target = torch.get_autocast_dtype("cuda") if autocast_enabled("cuda") else torch.bfloat16
        query, key, value = query.to(target), key.to(target), value.to(target)
    rows = (_rows(query), _rows(key), _rows(value))
    samples = cu_seq_lens.shape[0] - 1
    if cudnn and samples * max_length == batch * length and key.shape[1] == heads and not dropout:
        out = cudnn_dense(*rows, samples, scaling)
    else:
        out = flash_varlen(*rows, cu_seq_lens, max_length, dropout, scaling)
    return out.view(batch, length, heads, dim).to(dtype), None


flash_only_attention = functools.partial(attention, cudnn=False)


def on_flash_device(tensor: Any) -> bool:
    return tensor.is_cuda


def sequence_bounds(batch: int, length: int, device: Any, kwargs: dict) -> tuple[Any, int]:
    """(int32 cumulative sample lengths over the flattened tokens, longest sample)."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None and kwargs.get("max_length_q") is not None:
        return cu.to(device=device, dtype=torch.int32), int(kwargs["max_length_q"])
    positions = kwargs.get("position_ids")
    if positions is not None and batch == 1:  # flattened without bounds: restarts of the positions (one sync)
        starts = (positions.reshape(-1) == 0).nonzero().reshape(-1)
        ends = torch.cat([starts[1:], torch.tensor([length], device=starts.device)])
        cu = torch.cat([starts, torch.tensor([length], device=starts.device)]).to(device=device, dtype=torch.int32)
        return cu, int((ends - starts).max())
    # plain rows: every row one causal sequence
    return torch.arange(0, (batch + 1) * length, length, device=device, dtype=torch.int32), length


def flash_varlen(query: Any, key: Any, value: Any, cu_seq_lens: Any, max_length: int, dropout: float,
                 scale: float | None) -> Any:
    """Causal attention of each [start, end) span alone: q [tokens, heads, dim], k/v
    [tokens, kv_heads, dim] (grouped-query: kv_heads divides heads). torch's autograd
    knows this op's backward (its flash backward kernel)."""
    out = torch.ops.aten._flash_attention_forward(query, key, value, cu_seq_lens, cu_seq_lens, max_length, max_length,
                                                  dropout, True, False, scale=scale)
    return out[0]


def cudnn_dense(query: Any, key: Any, value: Any, samples: int, scale: float | None) -> Any:
    """Causal attention of `samples` spans of one length each, by cuDNN: q/k/v [tokens,
    heads, dim] -> out [tokens, heads, dim]."""
    from ._cudnn_op import causal_attention

    return causal_attention(query, key, value, samples, scale)


def _rows(states: Any) -> Any:
    """[batch, heads, length, dim] -> [batch * length, heads, dim], contiguous as the kernels need."""
    return states.transpose(1, 2).reshape(-1, states.shape[1], states.shape[3])

