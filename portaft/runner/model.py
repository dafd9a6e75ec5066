"""Step 4, model: the base model through the backend's loader, and what trains: a LoRA/DoRA
adapter with peft, or (finetune: full) every weight.

The seed is set first: LoRA's initial weights come from the seeded RNG, so the same
seed gives the same run.
"""

from __future__ import annotations

from typing import Any

from portaft.compat import checkpointing
from portaft.errors import UserError
from portaft.recipe import LoraSection, Recipe

from .notes import Notes


def load_model(resolved: Any, tokenizer: Any, notes: Notes) -> Any:
    """The model the Trainer will train (on the CPU or where the backend's loader put it)."""
    from transformers import set_seed

    recipe = resolved.recipe
    set_seed(int(recipe.train.get("seed", 42)))
    model = resolved.backend.load_model(recipe)
    _check_vocabulary(model, tokenizer, recipe)
    model = prepare_for_training(model, recipe.finetune, recipe.lora, checkpointing(recipe.train),
                                 recipe.quantization is not None)
    if note := _adapter_in_the_models_dtype_under_zero3(model, recipe):
        notes.say(note)
    notes.say(trainable_summary(model))
    return model


def _adapter_in_the_models_dtype_under_zero3(model: Any, recipe: Recipe) -> str | None:
    """peft keeps the adapter's weights in float32 and relies on autocast; DeepSpeed ZeRO-3 runs
    its layers without autocast and does not cast weights it partitions after loading, so a
    float32 adapter beside bfloat16 layers fails in the first matmul. Cast to the model's dtype,
    as LLaMA-Factory does under ZeRO-3: DeepSpeed's optimizer keeps float32 master weights."""
    from portaft.engines import deepspeed

    if recipe.finetune == "full" or deepspeed.stage(recipe.train) != 3:
        return None
    import torch

    dtype = getattr(torch, recipe.model.dtype, None)
    if not isinstance(dtype, torch.dtype) or dtype == torch.float32:
        return None
    cast = [p for p in model.parameters() if p.requires_grad and p.dtype != dtype]
    for parameter in cast:
        parameter.data = parameter.data.to(dtype)
    return (f"DeepSpeed ZeRO-3: the adapter's {len(cast)} weight tensors in {recipe.model.dtype}, the model's dtype "
            "(ZeRO-3 computes without autocast; its optimizer keeps float32 master weights)") if cast else None


def prepare_for_training(model: Any, finetune: str, lora: LoraSection, gradient_checkpointing: bool = False,
                         quantized: bool = False) -> Any:
    """The model the Trainer updates: an adapter around it, or the model itself."""
    if finetune == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    return apply_lora(model, lora, gradient_checkpointing, quantized)


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


def trainable_summary(model: Any) -> str:
    # ZeRO-3 loads each weight split (zero.Init): the tensor is empty, `ds_numel` is its size (as peft counts)
    def size(p: Any) -> int:
        return p.numel() or getattr(p, "ds_numel", 0)

    trainable = sum(size(p) for p in model.parameters() if p.requires_grad)
    total = sum(size(p) for p in model.parameters())
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"


def _check_vocabulary(model: Any, tokenizer: Any, recipe: Recipe) -> None:
    """A tokenizer with ids past the model's embeddings ends in a device-side assert on a
    GPU (an index error on the CPU): say what is wrong instead."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UserError(f"model.name_or_path: the tokenizer in {recipe.model.name_or_path} has {len(tokenizer):,} tokens "
                        f"but the model only {rows:,} embeddings: they do not belong together. Use the tokenizer "
                        "saved with this model.")
