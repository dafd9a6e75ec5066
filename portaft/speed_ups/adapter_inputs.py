"""Adapter layers take their inputs as autocast gives them (stage model).

peft keeps adapter weights in float32 and casts each adapted layer's input to float32
before the adapter's matmuls. Under autocast those matmuls run in bfloat16 (float16)
anyway, so the cast only copies the activations, forward and backward, in every adapted
layer: ~15% of a 7B LoRA step's GPU time. Without it the matmuls see the same
half-precision inputs. Outside autocast the dtypes would no longer match: samples.reply
generates under the model's autocast.
"""

from __future__ import annotations

from typing import Any

NAME = "adapter_inputs"
STAGE = "model"


def applies(training: Any) -> str | None:
    if training.model is training.base_model:
        return "no adapter (finetune: full)"
    if not (training.recipe.train.get("bf16") or training.recipe.train.get("fp16")):
        return "no mixed precision: the adapter's inputs are float32 already"
    return None


def apply(training: Any) -> str:
    adapted = keep_inputs_in_compute_dtype(training.model)
    return f"the {adapted} adapter layers take autocast's half-precision inputs, no float32 copy of them"


def keep_inputs_in_compute_dtype(model: Any) -> int:
    """Switch peft's input cast off in every adapted layer of `model`; how many there are."""
    adapted = 0
    for module in model.modules():
        if hasattr(module, "lora_A"):
            module.cast_input_dtype_enabled = False  # peft >= 0.15 reads it; older ones always cast
            adapted += 1
    return adapted
