"""The cpu backend: transformers + peft on the CPU. Always available."""

from portaft import hookimpl

from ._transformers import DevicePolicy, TransformersBackend


def _bf16_on_cpu() -> bool:
    return False  # CPU bf16 autocast exists but is slow and inexact on most CPUs: train in float32


CPU = DevicePolicy(unavailable_reason=lambda: None, supports_bf16=_bf16_on_cpu, supports_fp16=False, use_cpu=True)


@hookimpl
def register_backends(register):
    register(TransformersBackend(name="cpu", device_type="cpu", priority=0, distributed_backend="gloo", device=CPU))
