"""Each decoder layer compiled by torch.compile (stage model).

Inductor fuses the element-wise work around the matmuls (norms, activation, dropout,
LoRA's scale-and-add) into few kernels; its own norms replace Liger's, which dynamo
cannot trace (fused_norms then stays off). Not used where it was never measured:
bitsandbytes' 4-bit layers, and gradient checkpointing, which recomputes each layer in
the backward pass. A compile that fails leaves the layers as they were, with a warning,
instead of stopping the run in its first step.

Under `plan: auto` the layers are compiled only where it pays: a cold compile of a decoder
layer costs about 70 s on the first steps (7B shape on an H100, `h100-2026-12-07-redesign/`;
60-100 s on H200s), and compiled layers then save about 12-14 us a trained token (7B sft
mix: 12.6k against 10.7k tokens/s; Qwen2.5-0.5B: 38.5k against 26.4k; docs/performance.md).
So a run of fewer than COMPILE_PAYS_AFTER_TOKENS tokens a process trains uncompiled: the
seed tutorial's 2,400 conversations are about 0.7M tokens.
"""

from __future__ import annotations

import sys
from typing import Any

from portaft.compat import checkpointing
from portaft.engines import deepspeed, fsdp
from portaft.errors import first_line

NAME = "compiled_layers"
STAGE = "model"
COMPILE_PAYS_AFTER_TOKENS = 5_000_000  # ~70 s of compiling / ~14 us saved a token, on Hopper GPUs


def applies(training: Any) -> str | None:
    recipe = training.recipe
    if recipe.quantization is not None:
        return "not tried with bitsandbytes' 4-bit layers"
    fsdp_checkpointing = fsdp.completed_config(recipe.train).get("activation_checkpointing")
    if checkpointing(recipe.train) or fsdp_checkpointing:
        return "not tried with gradient checkpointing, which recomputes each layer in the backward pass"
    if deepspeed.stage(recipe.train) == 3:
        return "not tried with DeepSpeed ZeRO-3, whose hooks gather each layer's weights around its forward"
    if recipe.plan == "auto" and training.tokens:
        tokens = tokens_to_train(training)
        if tokens < COMPILE_PAYS_AFTER_TOKENS:
            return (f"plan auto: this run trains about {tokens / 1e6:.2g}M tokens a process, and compiling pays "
                    f"from about {COMPILE_PAYS_AFTER_TOKENS / 1e6:.0f}M (about 70 s to compile against ~14 us "
                    "saved a token); plan: as_written compiles them wherever checkpointing is off")
    return None


def tokens_to_train(training: Any) -> float:
    """Tokens this process will train: the epochs' (or max_steps') share of the data."""
    train = training.recipe.train
    per_process = training.tokens / max(1, training.processes)
    max_steps = int(train.get("max_steps", -1) or -1)
    if max_steps > 0:
        samples = int(train.get("per_device_train_batch_size", 8)) * int(train.get("gradient_accumulation_steps", 1))
        return max_steps * samples * training.tokens / max(1, training.samples)
    return per_process * float(train.get("num_train_epochs", 3))


def apply(training: Any) -> str:
    from . import _compile_cache

    path = _compile_cache.cache_file(_compile_cache.device_name())
    cached = _compile_cache.load(path)
    training.callbacks.append(_compile_cache.CompileProgress(path, speak=True))
    return f"{compile_layers(training.base_model)}; {cached}"


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
            # graphs a layer for Qwen2.5-0.5B, more launches and less fusion); and Python floats (LoRA's scale,
            # the norms' epsilon: the same in every layer) are constants, where dynamic=True traced them as
            # symbols, found they could not become tensors and traced the whole layer again ("Restarting
            # analysis due to _tensorify_python_scalars": a second dynamo and AOTAutograd trace of each compile)
            saved = (functorch_config.force_non_lazy_backward_lowering, dynamo_config.optimize_ddp,
                     dynamo_config.specialize_float)
            (functorch_config.force_non_lazy_backward_lowering, dynamo_config.optimize_ddp,
             dynamo_config.specialize_float) = True, False, True
            try:
                return compiled(*args, **kwargs)
            except torch._dynamo.exc.TorchDynamoException as exc:
                for layer, its_forward in eager_forwards:  # the layers share one graph: none would compile
                    layer.forward = its_forward
                reason = first_line(exc, None)
                print(f"portaft: warning: torch.compile of the decoder layers failed, they run uncompiled "
                      f"(the same loss, without the speed-up): {type(exc).__name__}: {reason}",
                      file=sys.stderr, flush=True)
                return eager(*args, **kwargs)
            finally:
                (functorch_config.force_non_lazy_backward_lowering, dynamo_config.optimize_ddp,
                 dynamo_config.specialize_float) = saved

        return forward

    for layer, eager in eager_forwards:
        layer.forward = compiled_or_eager(eager)
    if hasattr(model, "enable_input_require_grads"):
        # the first layer's input, the frozen embedding's output, would need no gradient where every other
        # layer's does: dynamo guards on that, so the first layer compiled a graph of its own, a second compile
        # of the whole layer. Its input carrying a gradient costs one [tokens, hidden] gradient a step
        model.enable_input_require_grads()
    return (f"each of the {len(eager_forwards)} decoder layers compiled (torch.compile, on the first steps, one graph "
            "for all; if the compile fails they run uncompiled, with a warning)")
