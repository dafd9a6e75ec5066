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

Nothing here has run on Ascend hardware (docs/ascend.md lists what is unverified).
"""

import functools
import importlib.util
import sys

from portaft.plugins.hookspecs import hookimpl

from .base import TransformersBackend
from .device import Device
from .library import Library, transformers_library


@functools.cache
def _unavailable_reason() -> str | None:
    if importlib.util.find_spec("torch_npu") is None:
        return "torch_npu is not installed (install CANN and the torch_npu wheel matching your torch)"
    try:  # importing torch_npu raises inside a CPU-only container (libhccl.so missing)
        import torch
        import torch_npu  # noqa: F401
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

    def library_note(self) -> str:
        problem = _openmind_problem()
        if problem is None:
            return f"npu: {self.library().name}'s Auto classes, TrainingArguments and Trainer; portaft's collator"
        return f"npu: {problem}, so transformers' own classes run on torch_npu"


@hookimpl
def register_backends(register):
    register(NpuBackend())
