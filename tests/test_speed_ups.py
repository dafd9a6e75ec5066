"""The cuda policy's speed-ups say what they did, or why they could not, in the run's notes."""

import dataclasses
import importlib.util

import pytest
import torch

from portaft.backends._speed_ups import speed_up
from portaft.backends.cuda import CUDA
from portaft.recipe import Recipe


@pytest.fixture
def loaded(recipe_dict, tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model), Recipe.model_validate(recipe_dict)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the reasons given where there is no GPU")
@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="needs liger-kernel absent")
def test_without_a_gpu_or_liger_each_speed_up_says_why_it_is_not_used(loaded):
    model, recipe = loaded
    notes = speed_up(model, recipe, CUDA, flattened=True)
    why = ("torch's flash kernels need an Ampere or newer GPU" if hasattr(model, "set_attn_implementation")
           else "this transformers cannot change a loaded model's attention")
    assert notes == [
        f"attention: sdpa over the whole flattened batch under a mask ({why})",
        "loss: the full logits are computed (liger-kernel is not installed (pip install 'liger-kernel>=0.8' "
        "(or portaft[cuda])))",
        "kernels: RMSNorm and the SwiGLU activation unfused (liger-kernel is not installed (pip install "
        "'liger-kernel>=0.8' (or portaft[cuda])))",
    ]
    assert model.config._attn_implementation != "portaft_varlen"


def test_what_the_recipe_chose_is_kept_and_padded_batches_keep_sdpa(loaded):
    model, recipe = loaded
    recipe.model.attn_implementation = "sdpa"
    policy = dataclasses.replace(CUDA, fused_loss=False, fused_norms=False)
    assert speed_up(model, recipe, policy, flattened=True) == []
    recipe.model.attn_implementation = "auto"
    assert speed_up(model, recipe, policy, flattened=False) == []


def test_fused_lora_updates_are_switched_on_by_the_policy_on_the_adapter_model(loaded):
    from portaft.adapters import apply_lora
    from portaft.recipe import LoraSection

    model, recipe = loaded
    model = apply_lora(model, LoraSection(r=4, alpha=8, dropout=0.0), False)
    policy = dataclasses.replace(CUDA, varlen_attention=False, fused_loss=False, fused_norms=False, fused_lora=True)
    layers = sum(1 for m in model.modules() if hasattr(m, "lora_A"))
    assert speed_up(model, recipe, policy, flattened=True) == [
        f"adapter: the update of {layers} LoRA layers added inside the matmul (addmm), not by separate scale and "
        "add kernels"]
