"""What a device policy switches on once the model is loaded (TransformersBackend.speed_up).

Each speed-up changes this one model instance, never a class, and keeps the loss the
same; each leaves a note in the run's record, also when it could not be used and why.
Measured one by one in bench/results/steps/ (docs/performance.md).
"""

from __future__ import annotations

import os
import sys
from typing import Any


def speed_up(model: Any, recipe: Any, policy: Any, flattened: bool) -> list[str]:
    """`model`: what the Trainer will train, a peft model around the base or the base itself."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    notes: list[str] = []
    if policy.varlen_attention and flattened and recipe.model.attn_implementation == "auto":
        notes.append(_varlen_attention(base, masks=not _without_masks(policy.varlen_without_masks),
                                       cudnn=policy.cudnn_attention))
    compiled = policy.compile_layers
    if compiled and (untried := _compile_untried(recipe)):
        compiled = False
        notes.append(f"kernels: the decoder layers run uncompiled ({untried})")
    # torch.compile cannot trace Liger's RMSNorm (measured); compiled layers fuse their norms themselves
    fused_norms = policy.fused_norms and not compiled
    if policy.fused_loss or fused_norms:
        notes += _liger_kernels(base, policy.fused_loss, fused_norms, policy.larger_loss_chunks)
    if policy.fused_lora and base is not model:
        from portaft.adapters import fuse_lora_updates

        fused = fuse_lora_updates(model)
        notes.append(f"adapter: the update of {fused} LoRA layers added inside the matmul (addmm), "
                     "not by separate scale and add kernels")
    if compiled:
        notes.append(_compile_layers(base))
    return notes


def _compile_untried(recipe: Any) -> str | None:
    """Why the layers stay uncompiled for this recipe: setups compile_layers was never measured with."""
    if recipe.quantization is not None:
        return "not tried with bitsandbytes' 4-bit layers"
    if recipe.train.get("gradient_checkpointing"):
        return "not tried with gradient checkpointing, which recomputes each layer in the backward pass"
    return None


def _without_masks(setting: bool | str) -> bool:
    """The policy's varlen_without_masks for this run. "several_processes": only under torchrun
    with several, where a sync at the start of each forward also waits for the other
    processes' collectives (docs/performance.md: faster on 2 GPUs, not on one)."""
    if setting == "several_processes":
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    return bool(setting)


def _varlen_attention(model: Any, masks: bool, cudnn: bool) -> str:
    from . import _flash_varlen

    reason = _flash_varlen.unusable_reason(model)
    no_cudnn = _flash_varlen.cudnn_unusable_reason(model) if cudnn and reason is None else None
    if reason is None:
        name = _flash_varlen.register(masks, cudnn=cudnn and no_cudnn is None)
        model.set_attn_implementation(name)
        if model.config._attn_implementation != name:
            reason = "the model's code does not take transformers' attention functions"
    if reason is not None:
        return f"attention: sdpa over the whole flattened batch under a mask ({reason})"
    note = ("attention: each sample of a flattened batch attends to itself only (torch's flash kernels, "
            "variable-length), not the whole batch under a mask")
    if cudnn:
        note += ("; batches of same-length samples take cuDNN's fused attention" if no_cudnn is None
                 else f"; cuDNN's fused attention is not used ({no_cudnn})")
    if not masks:
        note += "; transformers builds no attention masks (no device sync at the start of each forward)"
    return note


def _liger_kernels(model: Any, loss: bool, norms: bool, larger_chunks: bool = False) -> list[str]:
    import functools

    from . import _liger

    notes = []
    reason = _liger.unusable_reason(model)
    fuse_loss = _liger.fuse_loss
    fused = "loss: LM head and cross-entropy fused (Liger Kernel), the logits never held whole"
    if loss and larger_chunks and reason is None:
        if _liger.takes_chunk_mem_const():
            fuse_loss = functools.partial(_liger.fuse_loss, chunk_mem_const=_liger.LARGER_CHUNKS)
            fused += f", in chunks of up to {_liger.LARGER_CHUNKS}x the hidden states' size"
        else:
            fused += " (in Liger's own chunks: this liger-kernel cannot be given larger ones)"
    for wanted, fuse, done, missing in (
            (loss, fuse_loss, fused, "loss: the full logits are computed"),
            (norms, _liger.fuse_norms_and_mlp, "kernels: RMSNorm and the SwiGLU activation fused (Liger Kernel)",
             "kernels: RMSNorm and the SwiGLU activation unfused")):
        if not wanted:
            continue
        failed = reason
        if failed is None:
            try:
                fuse(model)
            except (ImportError, AttributeError, TypeError) as exc:  # another Liger version's API
                failed = f"this liger-kernel does not fit: {type(exc).__name__}: {exc}; {_liger.INSTALL}"
        notes.append(done if failed is None else f"{missing} ({failed})")
    return notes


def _compile_layers(model: Any, backend: Any = "inductor") -> str:
    """torch.compile each decoder layer; if a compile fails, every layer runs as it is from then on,
    with a warning, instead of the run stopping in its first step."""
    import torch
    import torch._dynamo.config as dynamo_config
    import torch._functorch.config as functorch_config

    decoder = getattr(model, model.base_model_prefix, model)
    eager_forwards = [(layer, layer.forward) for layer in decoder.layers]

    def compiled_or_eager(eager: Any) -> Any:
        # emulate_precision_casts: Inductor otherwise keeps fused intermediates in float32 where
        # eager rounds them to bf16: measured on the 7B shape, that moved the loss 2% from eager's
        # within two steps. fallback_random: dropout runs as eager's kernel (one Philox call for
        # four numbers, where torch 2.11's Inductor makes a call per number inside its fused
        # kernels): on the 7B shape at 4k +1.5% a median step, +5% a round (steps/14-...); the
        # masks are eager's, so a compiled run with LoRA dropout gives the eager run's loss
        options = {"emulate_precision_casts": True, "fallback_random": True} if backend == "inductor" else None
        compiled = torch.compile(eager, dynamic=True, backend=backend, options=options)

        def forward(*args: Any, **kwargs: Any) -> Any:
            # Settings for any compile this call starts, set and restored by hand (config.patch
            # took 62 us a call on a 2-core CPU, both set by hand 19 us): the backward graph is
            # compiled now too, not lazily in loss.backward() where no fallback could catch its
            # failure; and under DDP each layer stays one graph, where dynamo's DDPOptimizer
            # would split it at DDP's bucket boundaries (made for a model compiled whole; two
            # graphs a layer for Qwen2.5-0.5B, more launches and less fusion)
            saved = functorch_config.force_non_lazy_backward_lowering, dynamo_config.optimize_ddp
            functorch_config.force_non_lazy_backward_lowering, dynamo_config.optimize_ddp = True, False
            try:
                return compiled(*args, **kwargs)
            except torch._dynamo.exc.TorchDynamoException as exc:
                for layer, its_forward in eager_forwards:  # the layers share one graph: none would compile
                    layer.forward = its_forward
                reason = (str(exc).strip().splitlines() or [""])[0]
                print(f"portaft: warning: torch.compile of the decoder layers failed, they run uncompiled "
                      f"(the same loss, without the speed-up): {type(exc).__name__}: {reason}",
                      file=sys.stderr, flush=True)
                return eager(*args, **kwargs)
            finally:
                functorch_config.force_non_lazy_backward_lowering, dynamo_config.optimize_ddp = saved

        return forward

    for layer, eager in eager_forwards:
        layer.forward = compiled_or_eager(eager)
    return (f"kernels: each of the {len(eager_forwards)} decoder layers compiled (torch.compile, on the first "
            "steps; if the compile fails they run uncompiled, with a warning)")
