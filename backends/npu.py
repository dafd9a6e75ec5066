"""The npu backend: Huawei Ascend through torch_npu.

This module is the only place that imports torch_npu, and only inside functions, so
loading it on a machine without an NPU costs nothing. It reports itself unavailable
with the reason until torch_npu imports and sees a device. Training on it goes
through transformers' Trainer on the `npu` device; the openMind path, the
effective-recipe rules for 910A/910B and their verification belong to a later step
(see docs/backends.md: nothing here has run on Ascend hardware).
"""

import functools
import importlib.util

from portaft import hookimpl

from ._transformers import DevicePolicy, TransformersBackend


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


def _supports_bf16() -> bool:
    import torch

    return _unavailable_reason() is None and torch.npu.is_bf16_supported()  # 910A: no; 910B: yes


NPU = DevicePolicy(unavailable_reason=_unavailable_reason, supports_bf16=_supports_bf16, supports_fp16=True, use_cpu=False)


@hookimpl
def register_backends(register):
    # NPU is checked first by `auto`: a machine with an Ascend card may also see a GPU-less torch.
    register(TransformersBackend(name="npu", device_type="npu", priority=100, distributed_backend="hccl", device=NPU))
