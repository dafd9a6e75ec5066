"""The npu backend: its device module simulated (with and without a working torch_npu),
and its openMind library path run for real on the CPU (`device: cpu`) where openmind is
installed (the second CI environment, scripts/openmind-env.sh)."""

import importlib.util
import sys
import types

import pytest
import torch

import portaft
from portaft import load_recipe

has_openmind = importlib.util.find_spec("openmind") is not None
needs_openmind = pytest.mark.skipif(not has_openmind, reason="openmind is not installed (scripts/openmind-env.sh)")


@pytest.fixture
def npu_module():
    """backends/npu.py with its caches cleared, restored afterwards."""
    from portaft.backends import npu

    npu._unavailable_reason.cache_clear()
    npu._openmind_problem.cache_clear()
    yield npu
    npu._unavailable_reason.cache_clear()
    npu._openmind_problem.cache_clear()


def fake_torch_npu(monkeypatch, *, available: bool, bf16: bool, broken: bool = False):
    """A stand-in torch_npu: importing it adds torch.npu, as the real one does."""
    module = types.ModuleType("torch_npu")
    module.__spec__ = importlib.machinery.ModuleSpec("torch_npu", loader=None)
    if broken:
        monkeypatch.setitem(sys.modules, "torch_npu", None)  # `import torch_npu` raises ImportError
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: module.__spec__ if name == "torch_npu"
                            else _real_find_spec(name, *a))
        return
    monkeypatch.setitem(sys.modules, "torch_npu", module)
    monkeypatch.setattr(torch, "npu", types.SimpleNamespace(is_available=lambda: available,
                                                            is_bf16_supported=lambda: bf16), raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: module.__spec__ if name == "torch_npu"
                        else _real_find_spec(name, *a))


_real_find_spec = importlib.util.find_spec


@pytest.mark.parametrize("bf16, precision", [(True, "bf16"), (False, "fp16")])
def test_a_visible_npu_is_available_and_picks_its_precision(npu_module, monkeypatch, recipe_dict, bf16, precision):
    fake_torch_npu(monkeypatch, available=True, bf16=bf16)
    npu = portaft.get_backend("npu")
    assert npu.unavailable_reason() is None and npu.is_available()
    effective, notes = npu.resolve(load_recipe(recipe_dict))
    assert effective.train[precision] is True
    assert effective.model.dtype == ("bfloat16" if bf16 else "float16")
    assert f"train.{precision}: unset -> true" in "\n".join(notes)


def test_bf16_asked_on_a_910a_becomes_fp16_with_a_note(npu_module, monkeypatch, recipe_dict):
    fake_torch_npu(monkeypatch, available=True, bf16=False)
    recipe = load_recipe({**recipe_dict, "train": {**recipe_dict["train"], "bf16": True}})
    effective, notes = portaft.get_backend("npu").resolve(recipe)
    assert effective.train["bf16"] is False and effective.train["fp16"] is True
    assert "train.bf16: true -> false, train.fp16: true (npu has no bfloat16 here)" in notes


def test_no_visible_npu_and_a_broken_torch_npu_are_explained(npu_module, monkeypatch):
    fake_torch_npu(monkeypatch, available=False, bf16=False)
    assert "no Ascend device is visible" in portaft.get_backend("npu").unavailable_reason()
    npu_module._unavailable_reason.cache_clear()
    fake_torch_npu(monkeypatch, available=False, bf16=False, broken=True)
    assert "torch_npu is installed but failed to import" in portaft.get_backend("npu").unavailable_reason()


def test_device_cpu_selects_a_backend_without_its_hardware(recipe_dict):
    recipe = load_recipe({**recipe_dict, "backend": "npu", "device": "cpu"})
    assert portaft.plugins.get_plugins().choose_backend(recipe).name == "npu"
    effective, notes = portaft.get_backend("npu").resolve(recipe)
    assert effective.train["use_cpu"] is True and effective.model.dtype == "float32"
    assert not effective.train.get("bf16") and not effective.train.get("fp16")
    assert "device: cpu (the npu backend's library code runs on the CPU, in float32)" in notes


def test_what_ascend_lacks_is_mapped_with_a_note(npu_module, monkeypatch, recipe_dict):
    fake_torch_npu(monkeypatch, available=True, bf16=True)
    recipe = load_recipe({**recipe_dict, "model": {**recipe_dict["model"], "attn_implementation": "flash_attention_2"},
                          "train": {**recipe_dict["train"], "optim": "adamw_torch_fused"}})
    effective, notes = portaft.get_backend("npu").resolve(recipe)
    assert effective.model.attn_implementation == "sdpa"
    assert str(getattr(effective.train["optim"], "value", effective.train["optim"])) == "adamw_torch_npu_fused"
    assert ("model.attn_implementation: flash_attention_2 -> sdpa (flash-attn's CUDA kernels never run on Ascend; "
            "sdpa computes the same attention)") in notes
    assert "train.optim: adamw_torch_fused -> adamw_torch_npu_fused (its fused AdamW on npu)" in notes
    assert recipe.model.attn_implementation == "flash_attention_2"  # the recipe as written is untouched


def test_an_attention_choice_reaches_the_model(recipe_dict):
    recipe = load_recipe({**recipe_dict, "model": {**recipe_dict["model"], "attn_implementation": "eager"}})
    cpu = portaft.get_backend("cpu")
    effective, _ = cpu.resolve(recipe)
    assert cpu.load_model(effective).config._attn_implementation == "eager"
