"""What gets trained: a LoRA/DoRA adapter with peft, or (finetune: full) every weight."""

from __future__ import annotations

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
