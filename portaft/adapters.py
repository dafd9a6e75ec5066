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
                         quantized: bool = False) -> Any:
    """The model the Trainer updates: an adapter around it, or the model itself."""
    if finetune == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    return apply_lora(model, lora, gradient_checkpointing, quantized)


def trainable_summary(model: Any) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
