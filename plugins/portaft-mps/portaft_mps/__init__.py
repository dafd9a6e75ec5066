"""portaft-mps: train portaft recipes on an Apple-silicon GPU (torch device "mps").

A complete backend plugin: a subclass of portaft's TransformersBackend that says which
device it trains on and why that may be unavailable; portaft does the rest. torch is
imported inside the method, so loading this plugin on any machine costs nothing.
"""

from portaft import hookimpl
from portaft.backends import TransformersBackend


class MpsBackend(TransformersBackend):
    name = "mps"
    device_type = "mps"
    priority = 30  # `auto` order: npu (100) > cuda (50) > mps (30) > cpu (0)
    distributed_backend = "gloo"  # mps has no collective library of its own

    def unavailable_reason(self):
        import torch

        if not torch.backends.mps.is_built():
            return "this torch was built without mps support (mps needs macOS on Apple silicon)"
        if not torch.backends.mps.is_available():
            return "torch.backends.mps.is_available() is False (needs macOS 12.3+ on Apple silicon)"
        return None


@hookimpl
def register_backends(register):
    register(MpsBackend())
