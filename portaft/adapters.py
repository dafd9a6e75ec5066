"""What gets trained: a LoRA/DoRA adapter with peft, or (finetune: full) every weight."""

from __future__ import annotations

import types
from typing import Any

from .recipe import LoraSection


def apply_lora(model: Any, lora: LoraSection, gradient_checkpointing: bool = False, quantized: bool = False) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if quantized:  # QLoRA: peft's preparation (norms in float32, input grads for checkpointing)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed frozen embeddings would cut the graph
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias=lora.bias,
        use_dora=lora.use_dora,
        task_type=TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, config)


def prepare_for_training(model: Any, finetune: str, lora: LoraSection, gradient_checkpointing: bool = False,
                         quantized: bool = False, mixed_precision: bool = False) -> Any:
    """The model the Trainer updates: an adapter around it, or the model itself.
    `mixed_precision`: training runs under autocast (train.bf16 or train.fp16)."""
    if finetune == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    model = apply_lora(model, lora, gradient_checkpointing, quantized)
    if mixed_precision:
        keep_inputs_in_compute_dtype(model)
    return model


def keep_inputs_in_compute_dtype(model: Any) -> None:
    """peft keeps adapter weights in float32 and casts each adapted layer's input to
    float32 before the adapter's matmuls. Under autocast those matmuls run in bfloat16
    (float16) anyway, so the cast only copies the activations, forward and backward, in
    every adapted layer: ~15% of a 7B LoRA step's GPU time. Without it the matmuls see
    the same half-precision inputs. Outside autocast the dtypes would no longer match:
    samples.reply generates under the model's autocast."""
    for module in model.modules():
        if hasattr(module, "lora_A"):
            module.cast_input_dtype_enabled = False  # peft >= 0.15 reads it; older ones always cast


def trainable_summary(model: Any) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"


def fuse_lora_updates(model: Any) -> int:
    """Give each plain LoRA linear layer of `model` a forward that adds its update inside
    one matmul: base(x) + scaling * B(A(dropout(x))) as addmm(base(x), A(dropout(x)), B^T,
    alpha=scaling), so the [tokens, out] update is never scaled and added by separate
    kernels (forward and backward). The same sum, rounded once instead of three times.
    Returns how many layers; any other call (several adapters, DoRA, merged, disabled,
    extra arguments) goes to peft's own forward."""
    from peft.tuners.lora.layer import Linear

    fused = 0
    for module in model.modules():
        if type(module) is Linear:  # not peft's subclasses (bitsandbytes, DoRA variants...)
            module.forward = types.MethodType(_fused_lora_forward, module)
            fused += 1
    return fused


def _fused_lora_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    import torch

    active = self.active_adapters
    adapter = active[0] if len(active) == 1 else None
    if (args or kwargs or adapter is None or adapter not in self.lora_A or self.disable_adapters or self.merged
            or adapter in getattr(self, "lora_variant", {}) or getattr(self, "use_dora", {}).get(adapter)
            or self.lora_B[adapter].bias is not None or not _same_compute_dtype(x, self.lora_A[adapter].weight)):
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    update = self.lora_A[adapter](self.lora_dropout[adapter](x))
    fused = torch.addmm(result.reshape(-1, result.shape[-1]), update.reshape(-1, update.shape[-1]),
                        self.lora_B[adapter].weight.t(), alpha=self.scaling[adapter])
    return fused.view(result.shape)


def _same_compute_dtype(x: Any, weight: Any) -> bool:
    """The matmuls can take x as it is: the same dtype, or autocast casts both."""
    from .compat import autocast_enabled

    return x.dtype == weight.dtype or autocast_enabled(x.device.type)
