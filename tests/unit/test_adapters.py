"""The adapter under mixed precision: peft's float32 input cast skipped, the same numbers."""

import pytest
import torch

from portaft.runner.model import apply_lora
from portaft.speed_ups.adapter_inputs import keep_inputs_in_compute_dtype
from portaft.compat import model_dtype_kwargs
from portaft.recipe import LoraSection
from portaft.samples import answer_prompts


def _peft_casts_inputs_optionally() -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return hasattr(BaseTunerLayer, "_cast_input_dtype")


@pytest.mark.skipif(not _peft_casts_inputs_optionally(), reason="this peft always casts adapter inputs")
def test_skipping_the_float32_input_cast_changes_no_number_under_autocast(tiny_model, tokenizer):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model, **model_dtype_kwargs(torch.bfloat16)),
                       LoraSection(r=8, alpha=16, dropout=0.0), False)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: give the adapter something to add
            torch.nn.init.normal_(parameter, std=0.05)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    ids = torch.randint(3, 100, (2, 12))

    def loss_and_grads():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    cast_loss, cast_grads = loss_and_grads()
    keep_inputs_in_compute_dtype(model)
    with pytest.raises(RuntimeError):  # outside autocast half inputs meet float32 weights: the cast is really gone
        model(input_ids=ids)
    loss, grads = loss_and_grads()
    assert loss.item() == cast_loss.item()
    for grad, cast_grad in zip(grads, cast_grads):
        torch.testing.assert_close(grad, cast_grad, rtol=0, atol=0)


def test_a_half_precision_model_with_float32_adapters_still_answers(tiny_model, tokenizer):
    """Generation outside the Trainer's autocast: samples.reply brings its own."""
    from transformers import AutoModelForCausalLM

    from portaft.data.chat_templates import BUILT_IN

    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model, **model_dtype_kwargs(torch.bfloat16)),
                       LoraSection(r=8, alpha=16, dropout=0.0), False)
    keep_inputs_in_compute_dtype(model)
    answers = answer_prompts(model, tokenizer, BUILT_IN["deepseek"], ["你是谁？"], max_new_tokens=4)
    assert len(answers) == 1 and isinstance(answers[0]["answer"], str)


@pytest.mark.parametrize("dropout, dora", [(0.0, False), (0.1, False), (0.0, True)])
def test_lora_updates_added_inside_the_matmul_give_peft_s_outputs_and_gradients(tiny_model, dropout, dora,
                                                                                  monkeypatch):
    """fuse_lora_updates: the same forward and backward as peft's (DoRA falls back to peft's)."""
    from transformers import AutoModelForCausalLM

    from portaft.speed_ups.lora_fusion import fuse_lora_updates

    torch.manual_seed(0)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model, **model_dtype_kwargs(torch.float32)),
                       LoraSection(r=8, alpha=16, dropout=dropout, use_dora=dora), False)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    model.train()
    ids = torch.randint(3, 100, (2, 12))

    def loss_and_grads():
        torch.manual_seed(1)  # the same dropout masks in both runs
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    peft_loss, peft_grads = loss_and_grads()
    layers = sum(1 for m in model.modules() if hasattr(m, "lora_A"))
    assert fuse_lora_updates(model) == layers > 0
    addmm, calls = torch.addmm, []
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: calls.append(1) or addmm(*a, **k))
    loss, grads = loss_and_grads()
    assert len(calls) == (0 if dora else layers)  # DoRA: peft's own forward
    assert loss == pytest.approx(peft_loss, rel=1e-6)
    for grad, peft_grad in zip(grads, peft_grads):
        torch.testing.assert_close(grad, peft_grad, rtol=1e-4, atol=1e-6)
    with model.disable_adapter():  # peft's own switches still work
        assert model(input_ids=ids, labels=ids).loss.item() != pytest.approx(loss, rel=1e-6)
