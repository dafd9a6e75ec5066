"""The npu backend: Huawei Ascend through torch_npu and, when installed, openMind.

This module is the only place that imports torch_npu or openmind, and only inside
functions, so loading it on a machine without them costs nothing.

- Hardware: available once torch_npu imports and sees a device; bf16 where
  `torch.npu.is_bf16_supported()` (910B), else fp16 (910A).
- Library: openMind's Auto classes, TrainingArguments and Trainer when `openmind`
  imports (they subclass transformers'); else transformers' own on torch_npu, and a
  note says so. openMind ships no collator: portaft's seq2seq collator is used.
- `device: cpu` runs the same library code on the CPU: how CI exercises the openMind
  path for real on a machine without an NPU.
- Before torch_npu is imported: the fatal findings of `portaft doctor` that need no import
  (set_env.sh not sourced, torch vs torch_npu, more processes than visible NPUs) make the
  backend unavailable with the doctor's words; then the platform's settings
  (`npu_platform.py`) are set, each a note of the effective recipe.
- Speed-ups: Ascend's fused operators (portaft/speed_ups/npu_*.py), each where its
  operator exists in the installed torch_npu.
- A model folder whose tokenizer_config names a class this transformers lacks (a folder
  saved by transformers 5: TokenizersBackend, trained again on openMind's transformers
  4.45) loads its tokenizer.json as a PreTrainedTokenizerFast, with a note.

Nothing here has run on Ascend hardware (docs/ascend.md lists what is unverified).
"""

import functools
import importlib.util
import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from portaft.plugins.hookspecs import hookimpl
from portaft.speed_ups import (npu_fused_adamw, npu_fusion_attention, npu_rms_norm, npu_rotary_mul, npu_swiglu,
                               padding_free)

from . import npu_platform
from .base import TransformersBackend
from .device import Device
from .library import Library, transformers_library


def _versions() -> dict[str, str]:
    found = {}
    for name in ("torch", "torch_npu"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


@functools.cache
def _unavailable_reason() -> str | None:
    if importlib.util.find_spec("torch_npu") is None:
        return "torch_npu is not installed (install CANN and the torch_npu wheel matching your torch)"
    from portaft.checks import ascend

    fatal = ascend.fatal_before_import(os.environ, _versions())
    if fatal:  # the doctor's words instead of a deep traceback from torch_npu's import
        return "; ".join(f"portaft doctor: {f['what']} (fix: {f['fix']})" for f in fatal)
    try:  # importing torch_npu raises inside a CPU-only container (libhccl.so missing)
        import torch

        npu_platform.import_torch_npu()
    except Exception as exc:
        return f"torch_npu is installed but failed to import: {type(exc).__name__}: {exc}"
    if not torch.npu.is_available():
        return "torch_npu imported but no Ascend device is visible (torch.npu.is_available() is False)"
    return None


def import_openmind():
    """`import openmind`, undoing what it does to the process that portaft must not keep:
    it sets sys.tracebacklimit = 0, which would hide every later traceback."""
    had_limit, limit = hasattr(sys, "tracebacklimit"), getattr(sys, "tracebacklimit", None)
    try:
        import openmind
    finally:
        if had_limit:
            sys.tracebacklimit = limit
        elif hasattr(sys, "tracebacklimit"):
            del sys.tracebacklimit
    return openmind


@functools.cache
def _openmind_problem() -> str | None:
    """None when openmind imports, else why not (not installed, or its import failed)."""
    if importlib.util.find_spec("openmind") is None:
        return "openmind is not installed"
    try:
        import_openmind()
    except Exception as exc:  # e.g. a transformers newer than openMind supports
        return f"openmind is installed but failed to import ({type(exc).__name__}: {exc})"
    return None


class NpuBackend(TransformersBackend):
    name = "npu"
    device_type = "npu"
    # `auto` tries npu first: a machine with an Ascend card may also see a GPU-less torch
    priority = 100
    distributed_backend = "hccl"
    # the fused AdamW is a setting; the attention needs flattened batches, so padding_free first
    SPEED_UPS = (*TransformersBackend.SPEED_UPS, npu_fused_adamw, padding_free, npu_fusion_attention, npu_rms_norm,
                 npu_rotary_mul, npu_swiglu)

    def unavailable_reason(self) -> str | None:
        return _unavailable_reason()

    def device(self) -> Device:
        import torch

        bf16 = _unavailable_reason() is None and torch.npu.is_bf16_supported()  # 910A: no; 910B: yes
        return Device("npu", bf16=bf16, fp16=True, fused_optimizer="adamw_torch_npu_fused", collectives="hccl",
                      cannot={"quantization": "portaft runs bitsandbytes only on CUDA GPUs; its Ascend support is "
                                              "not verified",
                              "flash_attention_2": "flash-attn's CUDA kernels never run on Ascend"})

    def library(self) -> Library:
        if _openmind_problem() is not None:
            return transformers_library()
        openmind = import_openmind()
        return Library(f"openMind {getattr(openmind, '__version__', '')}".strip(), openmind.AutoTokenizer,
                       openmind.AutoModelForCausalLM, openmind.TrainingArguments, openmind.Trainer,
                       seq2seq_collator=None, local_only=True)

    def resolve(self, recipe: Any) -> tuple[Any, list[str]]:
        effective, notes = super().resolve(recipe)
        if recipe.device != "cpu":
            notes += npu_platform.notes()
        missing_class = foreign_tokenizer_class(recipe.model.name_or_path)
        if missing_class:
            notes.append(f"tokenizer: {missing_class} (tokenizer_config.json) is not in this transformers "
                         f"({_transformers_version()}), so its tokenizer.json loads as PreTrainedTokenizerFast: "
                         "the same vocabulary, merges and special tokens")
        return effective, notes

    def load_tokenizer(self, recipe: Any) -> Any:
        if foreign_tokenizer_class(recipe.model.name_or_path):
            return tokenizer_from_json(recipe.model.name_or_path)
        return super().load_tokenizer(recipe)

    def library_note(self) -> str:
        problem = _openmind_problem()
        if problem is None:
            return f"npu: {self.library().name}'s Auto classes, TrainingArguments and Trainer; portaft's collator"
        return f"npu: {problem}, so transformers' own classes run on torch_npu"


def foreign_tokenizer_class(folder: str) -> str | None:
    """The tokenizer_class a local model folder names that this transformers lacks, where the
    folder ships a tokenizer.json to fall back to; None otherwise."""
    config, tokenizer_json = Path(folder) / "tokenizer_config.json", Path(folder) / "tokenizer.json"
    if not config.is_file() or not tokenizer_json.is_file():
        return None
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = settings.get("tokenizer_class")
    if not name or settings.get("auto_map") or library_falls_back_itself():  # remote code brings its own class
        return None
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    try:
        return None if tokenizer_class_from_name(name) is not None else name
    except Exception:  # noqa: BLE001 (a lookup that fails is a class this transformers cannot give)
        return name


def library_falls_back_itself() -> bool:
    """transformers 5 loads tokenizer.json itself for a class it lacks; 4.x (openMind's) raises."""
    import transformers

    return hasattr(transformers, "TokenizersBackend")


def tokenizer_from_json(folder: str) -> Any:
    """tokenizer.json as transformers' fast tokenizer, with the special tokens, length and chat
    template tokenizer_config.json (and chat_template.jinja) give."""
    from transformers import PreTrainedTokenizerFast

    config = json.loads((Path(folder) / "tokenizer_config.json").read_text(encoding="utf-8"))
    keys = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token",
            "model_max_length", "padding_side", "clean_up_tokenization_spaces", "chat_template")
    kept = {key: config[key] for key in keys if config.get(key) is not None}
    for key, value in kept.items():  # a token saved as an AddedToken dict: its text (tokenizer.json has its flags)
        if isinstance(value, dict) and "content" in value:
            kept[key] = value["content"]
    template = Path(folder) / "chat_template.jinja"
    if "chat_template" not in kept and template.is_file():
        kept["chat_template"] = template.read_text(encoding="utf-8")
    return PreTrainedTokenizerFast(tokenizer_file=str(Path(folder) / "tokenizer.json"), **kept)


def _transformers_version() -> str:
    import transformers

    return f"transformers {transformers.__version__}"


@hookimpl
def register_backends(register):
    register(NpuBackend())
