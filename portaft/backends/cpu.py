"""The cpu backend: transformers + peft on the CPU, in float32. Always available."""

from portaft.plugins.hookspecs import hookimpl

from .base import TransformersBackend


class CpuBackend(TransformersBackend):
    name = "cpu"
    device_type = "cpu"
    priority = 0
    distributed_backend = "gloo"

    def unavailable_reason(self) -> None:
        return None


@hookimpl
def register_backends(register):
    register(CpuBackend())
