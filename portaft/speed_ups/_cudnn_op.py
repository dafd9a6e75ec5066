"""cuDNN's fused causal attention for samples of one length, as one opaque op (varlen_attention uses it).

torch's own op (`aten::_scaled_dot_product_cudnn_attention`) called inside a compiled
graph gave wrong gradients on an H200 (torch 2.11, cuDNN 9.19: tests/gpu/test_gpu.py, relative
error ~1 in dq/dk/dv, while the eager call in the same process was right): Inductor may
hand the kernel other layouts than eager does for the same call. Wrapped as a custom op
with its own backward op, every tensor crosses into cuDNN in one fixed layout
([tokens, heads, dim], contiguous, viewed as [samples, heads, length, dim]) and the
compiler sees only the op's boundary.
"""

from __future__ import annotations

from typing import Any

import torch


def causal_attention(query: Any, key: Any, value: Any, samples: int, scale: float | None) -> Any:
    """q/k/v [tokens, heads, dim] of `samples` spans of one length -> out [tokens, heads, dim]."""
    return _causal(query, key, value, samples, scale)[0]


@torch.library.custom_op("portaft::cudnn_causal_attention", mutates_args=(),
                         schema="(Tensor query, Tensor key, Tensor value, SymInt samples, float? scale) "
                                "-> (Tensor, Tensor)")
def _causal(query: Any, key: Any, value: Any, samples: int, scale: float | None) -> tuple[Any, Any]:
    out, logsumexp = cudnn_forward(*(_dense(t, samples) for t in (query, key, value)), scale)
    return _undense(out), logsumexp.contiguous()


@_causal.register_fake
def _(query: Any, key: Any, value: Any, samples: int, scale: float | None) -> tuple[Any, Any]:
    tokens, heads, _ = query.shape
    return (query.new_empty(tokens, heads, value.shape[2]),
            query.new_empty(samples, heads, tokens // samples, 1, dtype=torch.float32))


@torch.library.custom_op("portaft::cudnn_causal_attention_backward", mutates_args=(),
                         schema="(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor out, "
                                "Tensor logsumexp, SymInt samples, float? scale) -> (Tensor, Tensor, Tensor)")
def _causal_backward(grad_out: Any, query: Any, key: Any, value: Any, out: Any, logsumexp: Any, samples: int,
                     scale: float | None) -> tuple[Any, Any, Any]:
    grads = cudnn_backward(*(_dense(t, samples) for t in (grad_out, query, key, value, out)), logsumexp, scale)
    return tuple(_undense(g) for g in grads)


@_causal_backward.register_fake
def _(grad_out: Any, query: Any, key: Any, value: Any, out: Any, logsumexp: Any, samples: int,
      scale: float | None) -> tuple[Any, Any, Any]:
    return query.new_empty(query.shape), key.new_empty(key.shape), value.new_empty(value.shape)


def _save_for_backward(ctx: Any, inputs: tuple, output: tuple) -> None:
    query, key, value, ctx.samples, ctx.scale = inputs
    ctx.save_for_backward(query, key, value, *output)


def _backward(ctx: Any, grad_out: Any, _grad_logsumexp: Any) -> tuple:
    query, key, value, out, logsumexp = ctx.saved_tensors
    grads = _causal_backward(grad_out, query, key, value, out, logsumexp, ctx.samples, ctx.scale)
    return (*grads, None, None)


_causal.register_autograd(_backward, setup_context=_save_for_backward)


def cudnn_forward(query: Any, key: Any, value: Any, scale: float | None) -> tuple[Any, Any]:
    """torch's cuDNN attention kernel, causal, on [samples, heads, length, dim]: (out, logsumexp)."""
    return torch.ops.aten._scaled_dot_product_cudnn_attention(query, key, value, None, True, 0.0, True, False,
                                                              scale=scale)[:2]


def cudnn_backward(grad_out: Any, query: Any, key: Any, value: Any, out: Any, logsumexp: Any,
                   scale: float | None) -> tuple[Any, Any, Any]:
    length = query.shape[2]
    unused = torch.zeros(1, dtype=torch.long, device=query.device)  # dropout's seed and offset: no dropout
    return torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
        grad_out, query, key, value, out, logsumexp, unused, unused, None, None, None, length, length, 0.0, True,
        scale=scale)


def _dense(rows: Any, samples: int) -> Any:
    """[tokens, heads, dim] -> [samples, heads, length, dim], a view of the contiguous rows."""
    rows = rows.contiguous()
    return rows.view(samples, -1, rows.shape[1], rows.shape[2]).transpose(1, 2)


def _undense(states: Any) -> Any:
    """[samples, heads, length, dim] -> [tokens, heads, dim], contiguous."""
    return states.transpose(1, 2).reshape(-1, states.shape[1], states.shape[3]).contiguous()
