"""A backend for this machine's CPU, written from docs/plugins.md alone.

It subclasses portaft's TransformersBackend and says nothing else: portaft's contract
test installs it with pip and trains it through every feature.
"""

from portaft import hookimpl
from portaft.backends import TransformersBackend


class ContractCpu(TransformersBackend):
    name = "contract-cpu"
    device_type = "cpu"
    priority = -1  # `auto` keeps choosing portaft's own cpu backend
    distributed_backend = "gloo"

    def unavailable_reason(self):
        return None


@hookimpl
def register_backends(register):
    register(ContractCpu())
