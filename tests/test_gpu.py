"""The cuda backend on a real GPU (skipped where torch sees none, as in CI)."""

import json

import pytest
import torch

import portaft

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_cuda_backend_trains_in_mixed_precision_and_saves_a_loadable_adapter(recipe_dict):
    recipe_dict["train"]["max_steps"] = 12
    result = portaft.run(recipe_dict, backend="cuda", echo=print)
    record = json.loads((result.output_dir / "portaft_run.json").read_text(encoding="utf-8"))
    assert record["device"].startswith("cuda")
    precision = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    assert any(note == f"model.dtype: auto -> {precision} (matches the training precision)" for note in result.notes)
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert sum(losses[-3:]) < sum(losses[:3])

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(recipe_dict["model"]["name_or_path"])
    PeftModel.from_pretrained(base, result.output_dir)
