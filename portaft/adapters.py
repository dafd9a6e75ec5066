"""Applying the recipe's LoRA settings with peft."""

from __future__ import annotations

from typing import Any

from .recipe import LoraSection


def apply_lora(model: Any, lora: LoraSection, gradient_checkpointing: bool = False) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    if gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed frozen embeddings would cut the graph
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias=lora.bias,
        task_type=TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, config)


def trainable_summary(model: Any) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
