"""Each decoder layer compiled by torch.compile (stage model).

Inductor fuses the element-wise work around the matmuls (norms, activation, dropout,
LoRA's scale-and-add) into few kernels; its own norms replace Liger's, which dynamo
cannot trace (fused_norms then stays off). Not used where it was never measured:
bitsandbytes' 4-bit layers, and gradient checkpointing, which recomputes each layer in
the backward pass. A compile that fails leaves the layers as they were, with a warning,
instead of stopping the run in its first step.
"""

from __future__ import annotations

import sys
from typing import Any

from portaft.engines import deepspeed

NAME = "compiled_layers"
STAGE = "model"


def applies(training: Any) -> str | None:
    recipe = training.recipe
    if recipe.quantization is not None:
        return "not tried with bitsandbytes' 4-bit layers"
    fsdp_checkpointing = (recipe.train.get("fsdp_config") or {}).get("activation_checkpointing")
    if recipe.train.get("gradient_checkpointing") or fsdp_checkpointing:
        return "not tried with gradient checkpointing, which recomputes each layer in the backward pass"
    if deepspeed.stage(recipe.train) == 3:
        return "not tried with DeepSpeed ZeRO-3, whose hooks gather each layer's weights around its forward"
    return None


def apply(training: Any) -> str:
    return compile_layers(training.base_model)


def compile_layers(model: Any, backend: Any = "inductor") -> str:
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
    return (f"each of the {len(eager_forwards)} decoder layers compiled (torch.compile, on the first steps; if the "
            "compile fails they run uncompiled, with a warning)")
