"""Backends: where a recipe trains. `TransformersBackend` (base.py) is the public base of any
backend a transformers-style stack runs on; `Device` (device.py) says what its device is;
`Library` (library.py) which classes it trains with. portaft's own backends are cpu.py,
cuda.py and npu.py, registered through the `portaft` entry-point group like a plugin's."""

from .base import TransformersBackend
from .device import Device
from .library import Library

__all__ = ["Device", "Library", "TransformersBackend"]
