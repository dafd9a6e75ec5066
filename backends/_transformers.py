"""What the built-in backends share: transformers' Auto classes, Trainer and collator.

A backend is composed from this class and a small device policy (cpu.py, cuda.py,
npu.py); vendor-specific calls live only in those modules, imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from portaft.errors import UserError
from portaft.recipe import Recipe

@dataclass
class DevicePolicy:
    """The hardware facts a backend needs, answered by its device module."""

    unavailable_reason: Callable[[], str | None]  # None = available
    supports_bf16: Callable[[], bool]
    supports_fp16: bool
    use_cpu: bool  # tell TrainingArguments to stay on the CPU


@dataclass
class TransformersBackend:
    name: str
    device_type: str
    priority: int
    distributed_backend: str
    device: DevicePolicy

    def is_available(self) -> bool:
        return self.device.unavailable_reason() is None

    def unavailable_reason(self) -> str | None:
        return self.device.unavailable_reason()

    def resolve(self, recipe: Recipe) -> tuple[Recipe, list[str]]:
        """Map the portable precision settings onto this device; one note per change."""
        recipe = recipe.model_copy(deep=True)
        train = recipe.train
        notes: list[str] = []
        bf16_ok = self.device.supports_bf16()

        if train.get("bf16") and not bf16_ok:
            train["bf16"] = False
            if self.device.supports_fp16:
                train["fp16"] = True
                notes.append(f"train.bf16: true -> false, train.fp16: true ({self.name} has no bfloat16 here)")
            else:
                notes.append(f"train.bf16: true -> false ({self.name} has no bfloat16 here; training in float32)")
        if train.get("fp16") and not self.device.supports_fp16:
            train["fp16"] = False
            notes.append(f"train.fp16: true -> false ({self.name} cannot train in float16 mixed precision; float32)")
        if "bf16" not in train and "fp16" not in train and recipe.model.dtype == "auto":
            if bf16_ok and self.device.supports_fp16:  # an accelerator: mixed precision by default
                train["bf16"] = True
                notes.append("train.bf16: unset -> true (mixed precision is the default on an accelerator with bfloat16)")
            elif self.device.supports_fp16:
                train["fp16"] = True
                notes.append("train.fp16: unset -> true (no bfloat16 on this device, so float16 mixed precision)")

        if recipe.model.dtype == "auto":
            chosen = "bfloat16" if train.get("bf16") else "float16" if train.get("fp16") else "float32"
            recipe.model.dtype = chosen
            notes.append(f"model.dtype: auto -> {chosen} (matches the training precision)")
        elif recipe.model.dtype == "bfloat16" and not bf16_ok:
            recipe.model.dtype = "float16" if self.device.supports_fp16 else "float32"
            notes.append(f"model.dtype: bfloat16 -> {recipe.model.dtype} ({self.name} has no bfloat16 here)")

        if self.device.use_cpu and not train.get("use_cpu"):
            train["use_cpu"] = True
            notes.append("train.use_cpu: true (the cpu backend never moves the model to an accelerator)")
        return recipe, notes

    def load_tokenizer(self, recipe: Recipe) -> Any:
        from transformers import AutoTokenizer

        return _load("tokenizer", recipe, lambda: AutoTokenizer.from_pretrained(
            recipe.model.name_or_path, trust_remote_code=recipe.model.trust_remote_code))

    def load_model(self, recipe: Recipe) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        from portaft.compat import model_dtype_kwargs

        dtype = getattr(torch, recipe.model.dtype)  # resolve() has replaced "auto" by a torch dtype name
        return _load("model", recipe, lambda: AutoModelForCausalLM.from_pretrained(
            recipe.model.name_or_path, trust_remote_code=recipe.model.trust_remote_code, **model_dtype_kwargs(dtype)))

    def training_arguments(self, **kwargs: Any) -> Any:
        from transformers import TrainingArguments

        return TrainingArguments(**kwargs)

    def trainer(self, **kwargs: Any) -> Any:
        from transformers import Trainer

        from portaft.compat import trainer_kwargs

        tokenizer = kwargs.pop("tokenizer", None)
        return Trainer(**kwargs, **trainer_kwargs(Trainer, tokenizer))

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")


def _load(what: str, recipe: Recipe, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except (OSError, ValueError) as exc:
        raise UserError(
            f"model.name_or_path: cannot load the {what} from {recipe.model.name_or_path!r}: {exc}\n"
            "Give a local model folder (config.json, weights, tokenizer files) or a hub id this machine can reach."
        ) from None
