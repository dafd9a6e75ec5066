"""What the built-in backends share: transformers' Auto classes, Trainer and collator.

A backend is composed from this class and a small device policy (cpu.py, cuda.py,
npu.py); vendor-specific calls live only in those modules, imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from portaft.errors import UserError
from portaft.recipe import Recipe


@dataclass
class Library:
    """The classes a backend trains with: transformers' own, or a vendor's subclasses."""

    name: str
    auto_tokenizer: Any
    auto_model: Any
    training_arguments: Any
    trainer: Any
    seq2seq_collator: Any = None  # None: the library has none, portaft supplies its own
    local_only: bool = False  # the library sends hub ids to its own hub: accept local folders only


def transformers_library() -> Library:
    import transformers

    return Library(f"transformers {transformers.__version__}", transformers.AutoTokenizer,
                   transformers.AutoModelForCausalLM, transformers.TrainingArguments, transformers.Trainer,
                   seq2seq_collator=transformers.DataCollatorForSeq2Seq)


@dataclass
class DevicePolicy:
    """The hardware facts a backend needs, answered by its device module."""

    unavailable_reason: Callable[[], str | None]  # None = available
    supports_bf16: Callable[[], bool]
    supports_fp16: bool
    use_cpu: bool  # tell TrainingArguments to stay on the CPU
    has_flash_attention: Callable[[], bool] = lambda: False  # the flash_attn package works here
    fused_adamw: str | None = "adamw_torch_fused"  # this device's fused AdamW (TrainingArguments optim name)
    # train on batches without pad tokens (the same samples, flattened) where transformers can
    padding_free: bool = False
    # why bitsandbytes quantization (QLoRA) cannot run here; None = it can
    cannot_quantize: Callable[[], str | None] = lambda: "portaft runs bitsandbytes only on CUDA GPUs"
    # flattened batches attend per sample with torch's flash kernels (_flash_varlen.py);
    # without_masks: transformers builds no masks for it (no device sync at the start of each
    # forward; unpadded generation only): True, False, or "several_processes" (only when torchrun
    # started several: measured faster there, not with one process; docs/performance.md)
    varlen_attention: bool = False
    varlen_without_masks: bool | Literal["several_processes"] = False
    # ... and batches whose samples all have one length (full 4k sequences) take cuDNN's fused attention
    cudnn_attention: bool = False
    # Liger Kernel where installed (_liger.py): the LM head fused with the cross-entropy,
    # and RMSNorm and the SwiGLU activation as single kernels
    fused_loss: bool = False
    # ... in chunks of up to 16x the hidden states' size instead of Liger's 1x (fewer, larger
    # matmuls: +7.6% on the 7B shape at 4k, +22% on 2 GPUs with Qwen2.5-0.5B; docs/performance.md)
    larger_loss_chunks: bool = False
    fused_norms: bool = False
    # each LoRA layer's update added inside one matmul (adapters.fuse_lora_updates)
    fused_lora: bool = False
    # the host queues the next step while the GPU still runs this one: no device sync between
    # optimizer steps that log nothing (TrainingArguments defaults that wait for the GPU, changed
    # where the recipe leaves them unset). No faster on the 7B shape at 4k, where the GPU is busy
    # 92% of a step anyway; on for cuda since its measured numbers (docs/performance.md) were taken with it
    queue_ahead: bool = False
    # under torchrun with several processes and flattened batches, each step's samples shared
    # out between the processes by their tokens (portaft/data/shares.py): a step waits for its
    # busiest process. Not timed yet
    balanced_processes: bool = False
    # torch.compile each decoder layer (fuses the element-wise work around the matmuls;
    # Inductor's own norms replace Liger's, which dynamo cannot trace)
    compile_layers: bool = False


# `device: cpu`: any backend's library code, on the CPU, in float32
ON_CPU = DevicePolicy(unavailable_reason=lambda: None, supports_bf16=lambda: False, supports_fp16=False, use_cpu=True)


def _queue_ahead(train: dict) -> list[str]:
    """TrainingArguments defaults that make the host wait for the GPU every micro-batch, changed
    where the recipe leaves them unset: the queue then never runs dry between steps."""
    notes = []
    if "logging_nan_inf_filter" not in train:
        train["logging_nan_inf_filter"] = False
        notes.append("train.logging_nan_inf_filter: unset -> false (its check of every micro-batch's loss waits for "
                     "the GPU; portaft stops a run whose loss becomes NaN or infinite, before that step is saved)")
    if "accelerator_config" not in train and train.get("dataloader_pin_memory", True):
        train["accelerator_config"] = {"non_blocking": True}
        notes.append("train.accelerator_config: unset -> {non_blocking: true} (each batch is copied from pinned "
                     "memory without waiting for the GPU to finish the step before)")
    return notes


@dataclass
class TransformersBackend:
    name: str
    device_type: str
    priority: int
    distributed_backend: str
    device: DevicePolicy
    library: Callable[[], Library] = field(default=transformers_library)
    library_note: Callable[[], str | None] = field(default=lambda: None)

    def is_available(self) -> bool:
        return self.device.unavailable_reason() is None

    def unavailable_reason(self) -> str | None:
        return self.device.unavailable_reason()

    def resolve(self, recipe: Recipe) -> tuple[Recipe, list[str]]:
        """Map the portable precision settings onto this device; one note per change."""
        recipe = recipe.model_copy(deep=True)
        train = recipe.train
        notes: list[str] = []
        from portaft.compat import rename_training_arguments

        notes += rename_training_arguments(train)
        policy = ON_CPU if recipe.device == "cpu" else self.device
        if recipe.device == "cpu" and self.device_type != "cpu":
            notes.append(f"device: cpu (the {self.name} backend's library code runs on the CPU, in float32)")
        library_note = self.library_note()
        if library_note:
            notes.append(library_note)
        bf16_ok = policy.supports_bf16()

        if train.get("bf16") and not bf16_ok:
            train["bf16"] = False
            if policy.supports_fp16:
                train["fp16"] = True
                notes.append(f"train.bf16: true -> false, train.fp16: true ({self.name} has no bfloat16 here)")
            else:
                notes.append(f"train.bf16: true -> false ({self.name} has no bfloat16 here; training in float32)")
        if train.get("fp16") and not policy.supports_fp16:
            train["fp16"] = False
            notes.append(f"train.fp16: true -> false ({self.name} cannot train in float16 mixed precision; float32)")
        if "bf16" not in train and "fp16" not in train and recipe.model.dtype == "auto":
            if bf16_ok and policy.supports_fp16:  # an accelerator: mixed precision by default
                train["bf16"] = True
                notes.append("train.bf16: unset -> true (mixed precision is the default on an accelerator with bfloat16)")
            elif policy.supports_fp16:
                train["fp16"] = True
                notes.append("train.fp16: unset -> true (no bfloat16 on this device, so float16 mixed precision)")

        if recipe.model.dtype == "auto":
            chosen = "bfloat16" if train.get("bf16") else "float16" if train.get("fp16") else "float32"
            recipe.model.dtype = chosen
            notes.append(f"model.dtype: auto -> {chosen} (matches the training precision)")
        elif recipe.model.dtype == "bfloat16" and not bf16_ok:
            recipe.model.dtype = "float16" if policy.supports_fp16 else "float32"
            notes.append(f"model.dtype: bfloat16 -> {recipe.model.dtype} ({self.name} has no bfloat16 here)")

        if recipe.quantization is not None:
            notes += self._resolve_quantization(recipe, policy, bf16_ok)

        if recipe.model.attn_implementation == "flash_attention_2" and not policy.has_flash_attention():
            recipe.model.attn_implementation = "sdpa"
            notes.append(f"model.attn_implementation: flash_attention_2 -> sdpa (no flash-attn kernels on {self.name} here; "
                         "sdpa computes the same attention)")
        optim = str(getattr(train.get("optim"), "value", train.get("optim") or ""))
        if optim.startswith("adamw_torch") and "fused" in optim and optim != policy.fused_adamw:
            train["optim"] = policy.fused_adamw or "adamw_torch"
            notes.append(f"train.optim: {optim} -> {train['optim']} "
                         f"({'its fused AdamW' if policy.fused_adamw else 'no fused AdamW'} on {self.name})")
        if policy.queue_ahead:
            notes += _queue_ahead(train)
        if policy.use_cpu and not train.get("use_cpu"):
            train["use_cpu"] = True
            notes.append("train.use_cpu: true (training stays on the CPU, never on an accelerator)")
        return recipe, notes

    def _resolve_quantization(self, recipe: Recipe, policy: DevicePolicy, bf16_ok: bool) -> list[str]:
        """Refuse QLoRA where it cannot run, before anything is loaded; map its compute dtype."""
        reason = policy.cannot_quantize()
        if reason:
            where = "device: cpu" if recipe.device == "cpu" else f"the {self.name} backend"
            raise UserError(
                f"quantization: {recipe.quantization.bits}-bit loading cannot run with {where}: {reason}. Remove the "
                "quantization section (plain LoRA) or run on a CUDA GPU with --backend cuda."
            )
        if recipe.quantization.compute_dtype == "bf16" and not bf16_ok:
            recipe.quantization.compute_dtype = "fp16"
            return [f"quantization.compute_dtype: bf16 -> fp16 ({self.name} has no bfloat16 here)"]
        return []

    def padding_free(self, recipe: Recipe) -> bool:
        """Train each batch flattened, without pad tokens: the same samples and the same loss
        as padded (tests/test_packing.py), less compute and memory. Where the device wants
        it and the installed transformers reads packed position_ids."""
        from portaft.data.packing import packing_supported

        policy = ON_CPU if recipe.device == "cpu" else self.device
        return policy.padding_free and not recipe.packing and packing_supported() is None

    def balanced_processes(self, recipe: Recipe) -> bool:
        """Share each step's samples between several processes by their tokens: where the
        device wants it and batches are flattened (a sample then costs its tokens in any batch)."""
        policy = ON_CPU if recipe.device == "cpu" else self.device
        return policy.balanced_processes and self.padding_free(recipe)

    def speed_up(self, model: Any, recipe: Recipe) -> list[str]:
        """Make the loaded model train faster on this device without changing its loss:
        changes to this instance only, one note each (also for what could not be used)."""
        from ._speed_ups import speed_up

        policy = ON_CPU if recipe.device == "cpu" else self.device
        return speed_up(model, recipe, policy, flattened=recipe.packing or self.padding_free(recipe))

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
        return _load("model", recipe, lambda: library.auto_model.from_pretrained(
            recipe.model.name_or_path, trust_remote_code=recipe.model.trust_remote_code, **model_dtype_kwargs(dtype),
            **extra))

    def training_arguments(self, **kwargs: Any) -> Any:
        return self.library().training_arguments(**kwargs)

    def trainer(self, **kwargs: Any) -> Any:
        from portaft.compat import trainer_kwargs

        trainer_class = self.library().trainer
        tokenizer = kwargs.pop("tokenizer", None)
        return trainer_class(**kwargs, **trainer_kwargs(trainer_class, tokenizer))

    def collator(self, tokenizer: Any) -> Any:
        collator_class = self.library().seq2seq_collator
        if collator_class is None:  # openMind ships none: portaft's own (equal to transformers')
            return None
        return collator_class(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")

    def _library_for(self, recipe: Recipe) -> Library:
        library = self.library()
        if library.local_only and not Path(recipe.model.name_or_path).is_dir():
            raise UserError(
                f"model.name_or_path: {recipe.model.name_or_path!r} is not a local folder. {library.name} would look "
                "a hub id up on its own hub, not the one you may mean; download the model and give its folder."
            )
        return library


def quantization_kwargs(recipe: Recipe) -> dict[str, Any]:
    """from_pretrained arguments for a bitsandbytes-quantized base, on this process's GPU."""
    import os

    import torch
    from transformers import BitsAndBytesConfig

    q = recipe.quantization
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[q.compute_dtype]
    if q.bits == 4:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.type, bnb_4bit_use_double_quant=q.double_quant,
                                    bnb_4bit_compute_dtype=compute)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
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
