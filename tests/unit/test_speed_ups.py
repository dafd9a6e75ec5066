"""Speed-ups (portaft/speed_ups/): each says what it did, or why it was not used, and keeps the loss."""

import importlib.util
import types

import pytest
import torch

from portaft.backends.cuda import CudaBackend
from portaft.backends.device import CPU
from portaft.recipe import LoraSection, Recipe
from portaft.runner.model import apply_lora
from portaft.speed_ups import _compile_cache
from portaft.speed_ups import (MODEL, NotApplied, Training, apply_stage, attention_without_masks, compiled_layers,
                               cudnn_attention, fused_loss, fused_norms, lora_fusion, varlen_attention)


@pytest.fixture
def loaded(recipe_dict, tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model), Recipe.model_validate(recipe_dict)


def _apply(speed_ups, model, recipe, processes=1, flattened=True):
    """The notes of `speed_ups` (stage model) on `model`, as the plan step applies them."""
    return apply_stage(speed_ups, MODEL, Training(recipe, CPU, processes, model=model, flattened=flattened))


ATTENTION = (varlen_attention, cudnn_attention, attention_without_masks)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the reasons given where there is no GPU")
@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="needs liger-kernel absent")
def test_without_a_gpu_or_liger_each_cuda_speed_up_says_why_it_is_not_used(loaded):
    from portaft.data.packing import packing_supported

    model, recipe = loaded
    if packing_supported() is not None:
        pytest.skip("batches are flattened only where transformers reads packed position_ids")
    notes = _apply(CudaBackend().speed_ups(recipe), model, recipe, flattened=recipe.packing)
    why = ("torch's flash kernels need an Ampere or newer GPU" if hasattr(model, "set_attn_implementation")
           else "this transformers cannot change a loaded model's attention")
    layers = model.config.num_hidden_layers
    assert notes[2:] == [
        "speed-up padding_free: each batch's samples flattened into one row with their own position ids: no pad "
        "tokens computed, the same loss as padded",
        f"speed-up varlen_attention: not used ({why})",
        "speed-up cudnn_attention: not used (it serves varlen_attention, which this run does not use)",
        "speed-up attention_without_masks: not used (it serves varlen_attention, which this run does not use)",
        f"speed-up compiled_layers: each of the {layers} decoder layers compiled (torch.compile, on the first "
        "steps, one graph for all; if the compile fails they run uncompiled, with a warning); no compile cache yet: "
        "this run's is "
        f"kept in {_compile_cache.cache_file(_compile_cache.device_name())}",
        "speed-up fused_loss: not used (liger-kernel is not installed (pip install 'liger-kernel>=0.8' "
        "(or portaft[cuda])))",
        "speed-up fused_norms: not used (the compiled layers fuse their norms themselves (torch.compile cannot "
        "trace Liger's RMSNorm))",
    ]
    assert notes[0].startswith("speed-up frozen_objects: ") and notes[1].startswith("speed-up adapter_inputs: not used")
    assert model.config._attn_implementation != varlen_attention.ATTENTION


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="needs liger-kernel absent")
@pytest.mark.parametrize("setup, why", [
    ("gradient_checkpointing", "not tried with gradient checkpointing, which recomputes each layer in the backward pass"),
    ("quantization", "not tried with bitsandbytes' 4-bit layers")])
def test_layers_stay_uncompiled_where_compiling_was_never_measured(loaded, setup, why):
    """The cuda backend compiles the layers by default, except with gradient checkpointing or
    4-bit layers; there the run says so and Liger's norms are tried instead."""
    model, recipe = loaded
    if setup == "quantization":
        recipe.quantization = {"bits": 4}
    else:
        recipe.train["gradient_checkpointing"] = True
    layer_forwards = [layer.forward for layer in model.model.layers]
    notes = _apply([compiled_layers, fused_norms], model, recipe)
    assert notes[0] == f"speed-up compiled_layers: not used ({why})"
    assert notes[1].startswith("speed-up fused_norms: not used (liger-kernel is not installed")
    assert [layer.forward for layer in model.model.layers] == layer_forwards


@pytest.mark.parametrize("cudnn_reason", [None, "grouped-query heads"])
def test_same_length_batches_take_cudnn_where_it_can_and_the_notes_say_so(loaded, monkeypatch, cudnn_reason):
    """Where the varlen kernels can run, cuDNN takes batches of same-length samples, or the
    note says why not; without cuDNN the model gets the flash-only attention."""
    model, recipe = loaded
    if not hasattr(model, "set_attn_implementation"):
        pytest.skip("this transformers cannot change a loaded model's attention")
    monkeypatch.setattr(varlen_attention, "unusable_reason", lambda model: None)
    monkeypatch.setattr(cudnn_attention, "unusable_reason", lambda model: cudnn_reason)
    notes = _apply(ATTENTION, model, recipe)
    assert notes[0].startswith("speed-up varlen_attention: each sample of a flattened batch attends to itself only")
    if cudnn_reason is None:
        assert notes[1] == "speed-up cudnn_attention: batches of same-length samples take cuDNN's fused attention"
        assert model.config._attn_implementation == varlen_attention.ATTENTION
    else:
        assert notes[1] == "speed-up cudnn_attention: not used (grouped-query heads)"
        assert model.config._attn_implementation == varlen_attention.ATTENTION + varlen_attention.FLASH_ONLY


@pytest.mark.parametrize("processes, masks", [(1, True), (2, False)])
def test_the_attention_builds_no_masks_only_under_several_processes(loaded, monkeypatch, processes, masks):
    """Without masks transformers skips its packed-sequence check, a device sync at the start
    of each forward: measured faster with 2 processes, not with one, so attention_without_masks
    applies only when torchrun started several; the note says so."""
    model, recipe = loaded
    if not hasattr(model, "set_attn_implementation"):
        pytest.skip("this transformers cannot change a loaded model's attention")
    monkeypatch.setattr(varlen_attention, "unusable_reason", lambda model: None)
    monkeypatch.setattr(cudnn_attention, "unusable_reason", lambda model: None)
    notes = _apply(ATTENTION, model, recipe, processes=processes)
    expected = varlen_attention.ATTENTION if masks else varlen_attention.ATTENTION_WITHOUT_MASKS
    assert model.config._attn_implementation == expected
    assert notes[2] == ("speed-up attention_without_masks: not used (one process: measured no faster than with "
                        "masks (docs/performance.md))" if masks else
                        "speed-up attention_without_masks: transformers builds no attention masks (no device sync "
                        "at the start of each forward)")


def test_what_the_recipe_chose_is_kept_and_padded_batches_keep_sdpa(loaded):
    model, recipe = loaded
    recipe.model.attn_implementation = "sdpa"
    assert _apply([varlen_attention], model, recipe) == [
        "speed-up varlen_attention: not used (the recipe sets model.attn_implementation: sdpa)"]
    recipe.model.attn_implementation = "auto"
    assert _apply([varlen_attention], model, recipe, flattened=False) == [
        "speed-up varlen_attention: not used (the batches are padded, not flattened)"]
    assert model.config._attn_implementation not in (varlen_attention.ATTENTION, varlen_attention.ATTENTION_WITHOUT_MASKS)


def test_a_model_that_does_not_take_the_attention_is_left_as_it_was_and_the_note_says_so(loaded, monkeypatch):
    """What applies() could not know: set_attn_implementation did not take (NotApplied)."""
    model, recipe = loaded
    if not hasattr(model, "set_attn_implementation"):
        pytest.skip("this transformers cannot change a loaded model's attention")
    monkeypatch.setattr(varlen_attention, "unusable_reason", lambda model: None)
    monkeypatch.setattr(type(model), "set_attn_implementation", lambda self, name: None)
    training = Training(recipe, CPU, 1, model=model, flattened=True)
    notes = apply_stage(ATTENTION, MODEL, training)
    assert notes[0] == ("speed-up varlen_attention: not used (the model's code does not take transformers' "
                        "attention functions)")
    assert training.applied == []


def test_a_speed_up_that_raises_not_applied_is_noted_and_not_counted():
    recipe = types.SimpleNamespace()

    def refuse(training):
        raise NotApplied("found out while trying")

    tried = types.SimpleNamespace(NAME="tried", STAGE=MODEL, applies=lambda training: None, apply=refuse)
    after = types.SimpleNamespace(NAME="after", STAGE=MODEL, applies=lambda training: None if "tried" not in
                                  training.applied else "tried was applied", apply=lambda training: "done")
    settings = types.SimpleNamespace(NAME="settings", STAGE="settings", applies=lambda t: None, apply=lambda t: "no")
    training = Training(recipe, CPU, 1)
    assert apply_stage([tried, settings, after], MODEL, training) == [
        "speed-up tried: not used (found out while trying)", "speed-up after: done"]
    assert training.applied == ["after"]


def test_lora_fusion_adds_every_plain_lora_layers_update_inside_its_matmul(loaded):
    model, recipe = loaded
    model = apply_lora(model, LoraSection(r=4, alpha=8, dropout=0.0), False)
    layers = sum(1 for m in model.modules() if hasattr(m, "lora_A"))
    assert _apply([lora_fusion], model, recipe) == [
        f"speed-up lora_fusion: the update of {layers} LoRA layers added inside the matmul (addmm), not by separate "
        "scale and add kernels"]


@pytest.fixture
def fake_liger(monkeypatch):
    """Stand-ins for the pieces of liger-kernel 0.8.5 that portaft calls (the real one needs a
    GPU): Liger's forward records the keyword arguments it is given."""
    import importlib.machinery
    import sys
    import types

    given = []
    names = ("liger_kernel", "liger_kernel.transformers", "liger_kernel.transformers.model",
             "liger_kernel.transformers.model.llama", "liger_kernel.transformers.functional", "liger_kernel.ops",
             "liger_kernel.ops.fused_linear_cross_entropy")
    modules = {name: types.ModuleType(name) for name in names}
    for name, module in modules.items():
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        monkeypatch.setitem(sys.modules, name, module)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    modules["liger_kernel.transformers.model.llama"].lce_forward = lambda self, **kwargs: given.append(kwargs)
    modules["liger_kernel.transformers.functional"].liger_fused_linear_cross_entropy = (
        lambda input, weight, target, reduction="mean", chunk_mem_const=1: None)
    modules["liger_kernel.ops.fused_linear_cross_entropy"].LigerFusedLinearCrossEntropyFunction = type(
        "LigerFusedLinearCrossEntropyFunction", (), {"supports_inner_impl_dispatch": True})
    return types.SimpleNamespace(given=given, functional=modules["liger_kernel.transformers.functional"])


@pytest.mark.parametrize("larger", [False, True])
def test_larger_loss_chunks_reach_liger_and_the_note(loaded, fake_liger, monkeypatch, larger):
    """Liger's default chunks are 64 tokens for a 896-wide model under a 152k vocabulary;
    fused_loss hands its loss a 16x budget, through its forward's keyword arguments, where the
    installed Liger passes it on (larger=False: one that would not)."""
    from portaft.speed_ups import _liger

    model, recipe = loaded
    if model.config.model_type != "llama":
        pytest.skip("the stand-in is Liger's llama forward")
    if not larger:
        monkeypatch.setattr(_liger, "takes_chunk_mem_const", lambda: False)
    [note] = _apply([fused_loss], model, recipe)
    assert note.startswith("speed-up fused_loss: LM head and cross-entropy fused (Liger Kernel)")
    assert note.endswith(", in chunks of up to 16x the hidden states' size") is larger
    model(input_ids=torch.tensor([[1, 2]]), labels=torch.tensor([[1, 2]]))
    [given] = fake_liger.given
    assert sorted(given) == sorted(["input_ids", "labels"] + ["chunk_mem_const"] * larger)
    assert given.get("chunk_mem_const") == (16 if larger else None)


def test_a_liger_that_takes_no_chunk_size_keeps_its_own_and_says_so(loaded, fake_liger):
    """An older liger-kernel would drop chunk_mem_const without a word: then nothing is passed
    and the note says the chunks are Liger's own."""
    model, recipe = loaded
    if model.config.model_type != "llama":
        pytest.skip("the stand-in is Liger's llama forward")
    fake_liger.functional.liger_fused_linear_cross_entropy = lambda input, weight, target, reduction="mean": None
    [note] = _apply([fused_loss], model, recipe)
    assert note.endswith("the logits never held whole (in Liger's own chunks: this liger-kernel cannot be given "
                         "larger ones)")
    model(input_ids=torch.tensor([[1, 2]]))
    assert "chunk_mem_const" not in fake_liger.given[0]
