"""The cpu backend: transformers + peft on the CPU. Always available."""

from portaft import hookimpl

from ._transformers import ON_CPU, TransformersBackend

# float32 only: CPU bf16 autocast exists but is slow and inexact on most CPUs
CPU = ON_CPU


@hookimpl
def register_backends(register):
    register(TransformersBackend(name="cpu", device_type="cpu", priority=0, distributed_backend="gloo", device=CPU))
