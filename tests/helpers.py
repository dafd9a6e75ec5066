"""Helpers the test tiers share (conftest.py puts tests/ on sys.path: `from helpers import ...`)."""

import os
import subprocess
import sys
import types

import portaft
from portaft.plugins import Plugins


def cli(*args, cwd=None, env=None):
    """`portaft ARGS...` in a fresh process, as a user types it."""
    return subprocess.run([sys.executable, "-m", "portaft", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=600)


def plugin(**hooks):
    """An in-process plugin: each keyword a hook implementation."""
    return types.SimpleNamespace(**{name: portaft.hookimpl(function) for name, function in hooks.items()})


def use_plugins(monkeypatch, **plugins) -> Plugins:
    """Portaft's own plugins plus these, as `get_plugins()` (what every command uses)."""
    registry = Plugins()
    for name, each in plugins.items():
        registry.register(each, name=name)
    monkeypatch.setattr("portaft.plugins.registry._current", registry)
    return registry


def loads_no_model(monkeypatch):
    """Make loading a model fail the test, through the cpu backend or transformers' Auto class;
    the tokenizer may load (validate loads it, as run does before its data step, to check
    the chat template)."""
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the recipe was checked")

    monkeypatch.setattr(portaft.get_backend("cpu"), "load_model", refuse)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def loads_nothing(monkeypatch):
    """Make loading a tokenizer or model through the cpu backend fail the test (for what
    run refuses before its data step)."""
    loads_no_model(monkeypatch)

    def refuse(recipe):
        raise AssertionError("a tokenizer was loaded before the recipe was checked")

    monkeypatch.setattr(portaft.get_backend("cpu"), "load_tokenizer", refuse)


def tokenizer_of(recipe):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(recipe["model"]["name_or_path"])
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class LazyCpu:
    """A backend that reuses portaft's cpu backend by delegation, as docs/plugins.md shows:
    every member it does not define is the cpu backend's, looked up when read."""

    name, priority = "lazy-cpu", -1

    def __getattr__(self, member):
        return getattr(portaft.get_backend("cpu"), member)


class SavedTensorsMeter:
    """A memory meter for the CPU, where torch counts no allocations: the bytes of the distinct
    storages autograd saves for the backward pass during the `with` block (what the plan's
    activation estimate counts), in place of a device's peak above its start (probe.DeviceMeter)."""

    def __init__(self, model) -> None:
        self.model, self.bytes, self._seen = model, 0, {}

    def __enter__(self):
        import torch

        held = {t.untyped_storage().data_ptr() for t in [*self.model.parameters(), *self.model.buffers()]}

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in held:  # weights were on the device before the pass
                self._seen[storage.data_ptr()] = storage.nbytes()
            return tensor

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        self.bytes = sum(self._seen.values())
