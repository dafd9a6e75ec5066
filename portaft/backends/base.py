"""`TransformersBackend`: the base of every backend whose device a transformers-style stack runs on.

A subclass that sets `name`, `device_type`, `priority` and `distributed_backend`, and
defines `unavailable_reason()`, is a complete backend: portaft's cpu, cuda and npu
backends are such subclasses, as is any plugin's. It may also override

- `device()`: what its device is (precisions, fused optimizer, what it cannot do);
  the default asks torch's module for the device type (`torch.<device_type>`);
- `library()` / `library_note()`: other classes than transformers' (openMind's on npu);
- `SPEED_UPS`: the speed-up modules it offers, tried in order (portaft/speed_ups/).

Everything else (resolving the recipe onto the device, loading, the Trainer, packing,
resume, merge, parity, eval samples) is here or in the core, the same for every backend.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from portaft.errors import UserError
from portaft.recipe import Recipe
from portaft.speed_ups import adapter_inputs, frozen_objects

from .device import CPU, NO_BITSANDBYTES, NO_FLASH_ATTN, Device
from .library import Library, drawing_batches_from_a_sampler, transformers_library


class TransformersBackend(abc.ABC):
    name: ClassVar[str]  # what recipes and --backend call it
    device_type: ClassVar[str]  # the torch device type it trains on
    priority: ClassVar[int]  # `backend: auto` picks the available backend with the highest (npu 100, cuda 50, cpu 0)
    distributed_backend: ClassVar[str]  # torch.distributed backend of several processes: gloo, nccl, hccl
    SPEED_UPS: ClassVar[tuple[Any, ...]] = (frozen_objects, adapter_inputs)  # every device gets these

    @abc.abstractmethod
    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run here, in words a user can act on; None when it can."""

    def is_available(self) -> bool:
        return self.unavailable_reason() is None

    def device(self) -> Device:
        """What this backend's device is. The default: the CPU's facts for device type cpu;
        else bfloat16 where `torch.<device_type>.is_bf16_supported()` says so, no float16
        mixed precision, no fused optimizer, no bitsandbytes or flash-attn."""
        if self.device_type == "cpu":
            return CPU
        import torch

        check = getattr(getattr(torch, self.device_type, None), "is_bf16_supported", None)
        try:
            bf16 = bool(check()) if callable(check) and self.is_available() else False
        except Exception:  # noqa: BLE001 (a device module that cannot answer: no bfloat16)
            bf16 = False
        return Device(self.device_type, bf16=bf16, fp16=False, fused_optimizer=None,
                      collectives=self.distributed_backend,
                      cannot={"quantization": NO_BITSANDBYTES, "flash_attention_2": NO_FLASH_ATTN})

    def device_for(self, recipe: Recipe) -> Device:
        """The run's device: this backend's, or with `device: cpu` the CPU (its library code there)."""
        return CPU if recipe.device == "cpu" else self.device()

    def speed_ups(self, recipe: Recipe) -> Sequence[Any]:
        """The speed-ups offered for this run: on the CPU (`device: cpu`), those every device gets."""
        return TransformersBackend.SPEED_UPS if recipe.device == "cpu" else self.SPEED_UPS

    def library(self) -> Library:
        return transformers_library()

    def library_note(self) -> str | None:
        """One line for the run's notes about the classes it trains with; None: nothing to say."""
        return None

    # --- the recipe this backend really runs -------------------------------------------------

    def resolve(self, recipe: Recipe) -> tuple[Recipe, list[str]]:
        """Map the portable precision settings onto this device; one note per change."""
        from portaft.compat import rename_training_arguments

        recipe = recipe.model_copy(deep=True)
        train = recipe.train
        notes = rename_training_arguments(train)
        device = self.device_for(recipe)
        if recipe.device == "cpu" and self.device_type != "cpu":
            notes.append(f"device: cpu (the {self.name} backend's library code runs on the CPU, in float32)")
        if library_note := self.library_note():
            notes.append(library_note)
        notes += _precision(recipe, device, self.name)
        if recipe.quantization is not None:
            notes += self._quantization(recipe, device)
        reason = device.cannot.get("flash_attention_2")
        if recipe.model.attn_implementation == "flash_attention_2" and reason:
            recipe.model.attn_implementation = "sdpa"
            notes.append(f"model.attn_implementation: flash_attention_2 -> sdpa ({reason}; sdpa computes the same "
                         "attention)")
        optim = str(getattr(train.get("optim"), "value", train.get("optim") or ""))
        if optim.startswith("adamw_torch") and "fused" in optim and optim != device.fused_optimizer:
            train["optim"] = device.fused_optimizer or "adamw_torch"
            notes.append(f"train.optim: {optim} -> {train['optim']} "
                         f"({'its fused AdamW' if device.fused_optimizer else 'no fused AdamW'} on {self.name})")
        if device.type == "cpu" and not train.get("use_cpu"):
            train["use_cpu"] = True
            notes.append("train.use_cpu: true (training stays on the CPU, never on an accelerator)")
        return recipe, notes

    def _quantization(self, recipe: Recipe, device: Device) -> list[str]:
        """Refuse QLoRA where it cannot run, before anything is loaded; map its compute dtype."""
        reason = device.cannot.get("quantization")
        if reason:
            where = "device: cpu" if recipe.device == "cpu" else f"the {self.name} backend"
            raise UserError(
                f"quantization: {recipe.quantization.bits}-bit loading cannot run with {where}: {reason}. Remove the "
                "quantization section (plain LoRA) or run on a CUDA GPU with --backend cuda."
            )
        if recipe.quantization.compute_dtype == "bf16" and not device.bf16:
            recipe.quantization.compute_dtype = "fp16"
            return [f"quantization.compute_dtype: bf16 -> fp16 ({self.name} has no bfloat16 here)"]
        return []

    # --- loading and training ------------------------------------------------------------------

    def load_tokenizer(self, recipe: Recipe) -> Any:
        library = self._library_for(recipe)
        return _load("tokenizer", recipe, lambda: library.auto_tokenizer.from_pretrained(
            recipe.model.name_or_path, trust_remote_code=recipe.model.trust_remote_code))

    def load_model(self, recipe: Recipe) -> Any:
        import torch

        from portaft.compat import model_dtype_kwargs

        library = self._library_for(recipe)
        dtype = getattr(torch, recipe.model.dtype)  # resolve() has replaced "auto" by a torch dtype name
        extra = {} if recipe.model.attn_implementation == "auto" else {"attn_implementation": recipe.model.attn_implementation}
        if recipe.quantization is not None:
            extra.update(quantization_kwargs(recipe))
        else:
            extra.update(self._straight_to_device(recipe))
        return _load("model", recipe, lambda: library.auto_model.from_pretrained(
            recipe.model.name_or_path, trust_remote_code=recipe.model.trust_remote_code, **model_dtype_kwargs(dtype),
            **extra))

    def _straight_to_device(self, recipe: Recipe) -> dict[str, Any]:
        """from_pretrained's device_map that reads the weights onto this process's device, instead of
        into host memory for the Trainer to copy over when it starts (7B in bf16: 14 GB read once, not
        twice). Not on the CPU, and not under FSDP or DeepSpeed, which place (and split) the weights
        themselves."""
        import os

        from portaft import engines

        device = self.device_for(recipe)
        if device.type == "cpu" or recipe.train.get("use_cpu") or engines.asked(recipe):
            return {}
        if not _torch_has_accelerator(device.type):  # the Trainer would train on the CPU: load there as before
            return {}
        return {"device_map": {"": f"{device.type}:{int(os.environ.get('LOCAL_RANK', '0'))}"}}

    def training_arguments(self, **kwargs: Any) -> Any:
        return self.library().training_arguments(**kwargs)

    def collator(self, tokenizer: Any) -> Any:
        collator_class = self.library().seq2seq_collator
        if collator_class is None:  # openMind ships none: portaft's own (equal to transformers')
            return None
        return collator_class(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")

    def trainer(self, *, model: Any, args: Any, train_dataset: Any, data_collator: Any, tokenizer: Any,
                batch_sampler: Any = None, eval_dataset: Any = None) -> Any:
        from portaft.compat import trainer_kwargs

        trainer_class = self.library().trainer
        given = {"model": model, "args": args, "train_dataset": train_dataset, "data_collator": data_collator,
                 "eval_dataset": eval_dataset, **trainer_kwargs(trainer_class, tokenizer)}
        if batch_sampler is None:
            return trainer_class(**given)
        return drawing_batches_from_a_sampler(trainer_class)(**given, batch_sampler=batch_sampler)

    def _library_for(self, recipe: Recipe) -> Library:
        library = self.library()
        if library.local_only and not Path(recipe.model.name_or_path).is_dir():
            raise UserError(
                f"model.name_or_path: {recipe.model.name_or_path!r} is not a local folder. {library.name} would look "
                "a hub id up on its own hub, not the one you may mean; download the model and give its folder."
            )
        return library


def _torch_has_accelerator(device_type: str) -> bool:
    """Whether torch itself sees an accelerator of this type (torch.accelerator, torch >= 2.6;
    torch_npu registers the NPU there); an older torch: not known, so no."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None or not hasattr(accelerator, "current_accelerator"):
        return False
    found = accelerator.current_accelerator()
    return found is not None and found.type == device_type


def _precision(recipe: Recipe, device: Device, backend: str) -> list[str]:
    """train.bf16/fp16 and model.dtype as this device can train, in place; a note per change."""
    train, notes = recipe.train, []
    if train.get("bf16") and not device.bf16:
        train["bf16"] = False
        if device.fp16:
            train["fp16"] = True
            notes.append(f"train.bf16: true -> false, train.fp16: true ({backend} has no bfloat16 here)")
        else:
            notes.append(f"train.bf16: true -> false ({backend} has no bfloat16 here; training in float32)")
    if train.get("fp16") and not device.fp16:
        train["fp16"] = False
        notes.append(f"train.fp16: true -> false ({backend} cannot train in float16 mixed precision; float32)")
    if "bf16" not in train and "fp16" not in train and recipe.model.dtype == "auto":
        if device.bf16 and device.fp16:  # an accelerator: mixed precision by default
            train["bf16"] = True
            notes.append("train.bf16: unset -> true (mixed precision is the default on an accelerator with bfloat16)")
        elif device.fp16:
            train["fp16"] = True
            notes.append("train.fp16: unset -> true (no bfloat16 on this device, so float16 mixed precision)")
    if recipe.model.dtype == "auto":
        chosen = "bfloat16" if train.get("bf16") else "float16" if train.get("fp16") else "float32"
        recipe.model.dtype = chosen
        notes.append(f"model.dtype: auto -> {chosen} (matches the training precision)")
    elif recipe.model.dtype == "bfloat16" and not device.bf16:
        recipe.model.dtype = "float16" if device.fp16 else "float32"
        notes.append(f"model.dtype: bfloat16 -> {recipe.model.dtype} ({backend} has no bfloat16 here)")
    return notes


def quantization_kwargs(recipe: Recipe) -> dict[str, Any]:
    """from_pretrained arguments for a bitsandbytes-quantized base, on this process's GPU."""
    import os

    import torch
    from transformers import BitsAndBytesConfig

    from portaft.engines import deepspeed

    q = recipe.quantization
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if q.bits == 4:
        storage = {"bnb_4bit_quant_storage": dtypes[q.storage]} if q.storage in dtypes else {}
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.type, bnb_4bit_use_double_quant=q.double_quant,
                                    bnb_4bit_compute_dtype=dtypes[q.compute_dtype], **storage)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    if deepspeed.stage(recipe.train) == 3:  # ZeRO-3 places (and splits) the weights itself: no device_map
        return {"quantization_config": config}
    # bitsandbytes quantizes while placing the weights: each DDP process loads onto its own GPU
    return {"quantization_config": config, "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))}}


def _load(what: str, recipe: Recipe, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except (OSError, ValueError) as exc:
        raise UserError(
            f"model.name_or_path: cannot load the {what} from {recipe.model.name_or_path!r}: {exc}\n"
            "Give a local model folder (config.json, weights, tokenizer files) or a hub id this machine can reach."
        ) from None
