"""Differences between the transformers / peft versions portaft supports, in one place."""

from __future__ import annotations

import inspect
from typing import Any


def model_dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """transformers 4.56 renamed from_pretrained's `torch_dtype` to `dtype` (a **kwargs key)."""
    import transformers
    from packaging.version import Version

    renamed = Version(transformers.__version__).release >= (4, 56)
    return {"dtype": dtype} if renamed else {"torch_dtype": dtype}


# TrainingArguments renamed or folded into another across the transformers versions portaft
# supports (4.45 to 5.x): old -> new, the value unchanged. A recipe written for either side
# keeps working; the old name is translated where the installed transformers lacks it.
RENAMED_TRAINING_ARGUMENTS = {
    "evaluation_strategy": "eval_strategy",  # renamed in 4.41, the old name removed in 4.46
    "warmup_ratio": "warmup_steps",  # 5.x: warmup_steps below 1 is the fraction (transformers#41326; gone in 5.2)
    "no_cuda": "use_cpu",  # use_cpu since 4.34; no_cuda removed in 5.0
    "per_gpu_train_batch_size": "per_device_train_batch_size",  # removed in 5.0
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",  # removed in 5.0
    "push_to_hub_token": "hub_token",  # removed in 5.0
}

# Removed in transformers 5 with no successor: a recipe written for 4.x (LLaMA-Factory's carry
# them) keeps working, each dropped with a note saying what happens instead
REMOVED_TRAINING_ARGUMENTS = {
    "overwrite_output_dir": "portaft's own `overwrite: true` (with resume: false) starts over in a used folder",
    "logging_dir": "transformers 5 writes a tracker's logs under output_dir; portaft_log.jsonl is there too",
    "save_safetensors": "transformers 5 always saves safetensors",
}


def rename_training_arguments(train: dict[str, Any]) -> list[str]:
    """Give a recipe's old argument names the installed TrainingArguments' names, in place;
    one note per rename. Recipes written for either side of a rename keep working."""
    import dataclasses

    from transformers import TrainingArguments

    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    notes = []
    for old, new in RENAMED_TRAINING_ARGUMENTS.items():
        if old in train and old not in known and new in known:
            value = train.pop(old)
            if new in train:
                notes.append(f"train.{old}: dropped, train.{new} is also set (transformers renamed {old} to {new})")
            else:
                train[new] = value
                why = ("transformers 5 reads a warmup_steps below 1 as that fraction of the steps"
                       if old == "warmup_ratio" else "its name in this transformers")
                notes.append(f"train.{old} -> train.{new} ({why})")
    for old, instead in REMOVED_TRAINING_ARGUMENTS.items():
        if old in train and old not in known:
            train.pop(old)
            notes.append(f"train.{old}: dropped (this transformers has no such argument; {instead})")
    return notes


CHECKPOINTING_KEYS = ("activation_checkpointing", "gradient_checkpointing")  # transformers >= 5.2x's name first


def checkpointing(train: dict[str, Any]) -> bool:
    """Whether a recipe's train: asks for activation (gradient) checkpointing, by either name
    (transformers 5.2x renamed gradient_checkpointing to activation_checkpointing)."""
    return any(bool(train.get(key)) for key in CHECKPOINTING_KEYS)


def set_checkpointing(train: dict[str, Any], args: Any, on: bool) -> None:
    """Checkpointing on or off in the recipe's train: and in TrainingArguments already made,
    under every name they have (transformers >= 5.2x reads activation_checkpointing)."""
    names = [key for key in CHECKPOINTING_KEYS if hasattr(args, key)] or ["gradient_checkpointing"]
    for key in [k for k in CHECKPOINTING_KEYS if k in train] or names[:1]:
        train[key] = on
    for key in names:
        setattr(args, key, on)


def trainer_kwargs(trainer_cls: type, tokenizer: Any) -> dict[str, Any]:
    """transformers 4.46 renamed Trainer's `tokenizer` to `processing_class`."""
    params = inspect.signature(trainer_cls.__init__).parameters
    return {"processing_class": tokenizer} if "processing_class" in params else {"tokenizer": tokenizer}


def chat_template_renderer(tokenizer: Any, chat_template: str) -> Any:
    """A function messages, add_generation_prompt, tools -> text, equal to apply_chat_template(tokenize=False).

    transformers compiles a template in the private `_compile_jinja_template`; calling
    the compiled template directly costs a fifth of apply_chat_template per render,
    which matters when every conversation is rendered once per assistant turn. Where
    that function is missing, apply_chat_template itself is used. Tests keep the two
    equal for every registered template.
    """
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        compiled = _compile_jinja_template(chat_template)
    except ImportError:
        compiled = None
    if compiled is None:
        def render(messages: list, add_generation_prompt: bool = False, tools: list | None = None) -> str:
            return tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt, tools=tools)
        return render

    # Template.render merges the template's globals (a ChainMap) into a new dict on every
    # call, a third of a render's time; merging them once and passing shared=True
    # (Jinja's public new_context API) renders the same text.
    base = {**dict(compiled.globals), **tokenizer.special_tokens_map, "tools": None, "documents": None}

    def render(messages: list, add_generation_prompt: bool = False, tools: list | None = None) -> str:
        values = {**base, "messages": messages, "add_generation_prompt": add_generation_prompt}
        if tools:
            values["tools"] = tools
        context = compiled.new_context(values, shared=True)
        return "".join(compiled.root_render_func(context))
    return render


def numpy_in_checkpoints() -> Any:
    """A context in which torch.load accepts the numpy RNG state inside a checkpoint.

    torch >= 2.6 loads with weights_only=True by default; transformers >= 4.49 allowlists
    numpy's array types itself when it reads rng_state.pth, 4.45 does not and resuming
    fails. This allows the same few types transformers does (no arbitrary objects)."""
    import contextlib

    import numpy as np
    import torch

    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5: no weights_only default
        return contextlib.nullcontext()
    core = np._core if int(np.__version__.split(".")[0]) >= 2 else np.core  # 1.26 has a partial np._core
    return torch.serialization.safe_globals([core.multiarray._reconstruct, np.ndarray, np.dtype,
                                             type(np.dtype(np.uint32))])


def autocast_enabled(device_type: str) -> bool:
    """torch.is_autocast_enabled for one device type; False where this torch (< 2.4)
    cannot be asked per device type."""
    import torch

    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        return False


def autocast(device_type: str, dtype: Any) -> Any:
    """torch.autocast for this device type, or no context where torch has none for it."""
    import contextlib

    import torch

    available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    if available is not None and not available(device_type):
        return contextlib.nullcontext()
    try:
        return torch.autocast(device_type, dtype=dtype)
    except RuntimeError:
        return contextlib.nullcontext()
