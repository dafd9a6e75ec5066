"""plan: auto's probe step (runner/probe.py): one forward and backward pass measures what a token
keeps, the split is chosen again from that measure, and the run is left as it was."""

import types

import pytest
import torch

from helpers import SavedTensorsMeter
from portaft.runner import execution, probe
from portaft.runner.execution import GIB, Execution, MemoryModel, ModelFacts

# a DeepSeek-LLM-7B-shaped decoder's facts: bf16, LoRA r 64 on all linear layers (150M weights)
SEVEN_B = ModelFacts(hidden=4096, kv_hidden=4096, ffn=11008, layers=30, vocab=129280, dtype_bytes=2,
                     trainable_bytes=150_000_000 * 2, lora_rank=64)
WRITTEN = {"micro_batch": 2, "accumulation": 8, "checkpointing": True}


def _planned(micro, checkpointing, budget_gib, measured_over_estimate):
    """An Execution as plan_execution leaves it, then as the probe leaves it: measured at a
    fraction of the estimate (fused loss and norms, longest sample 1,024 tokens)."""
    memory = MemoryModel(SEVEN_B, fixed=0.9 * GIB, longest=1024, fused_loss=True, fused_layers=True, fsdp_own=None,
                         budget=budget_gib * GIB)
    plan = Execution("auto", micro, 16 // micro, checkpointing, dict(WRITTEN), "estimate", memory=memory)
    estimated = memory.per_token(False)
    memory.scale, memory.margin = measured_over_estimate, probe.PROBED_MARGIN
    plan.probe = {"measured": True, "tokens": 8192, "kept_mb_per_token": round(estimated * measured_over_estimate
                                                                               / 1e6, 3),
                  "estimated_mb_per_token": round(estimated / 1e6, 3)}
    return plan


def _args():
    return types.SimpleNamespace(per_device_train_batch_size=8, gradient_accumulation_steps=2,
                                 gradient_checkpointing=False)


def _recipe():
    from portaft.recipe import Recipe

    return Recipe.model_validate({"model": {"name_or_path": "m"}, "data": [{"path": "d.jsonl"}],
                                  "train": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 8,
                                            "gradient_checkpointing": True, "output_dir": "/tmp/unused"}})


def test_a_measure_below_the_estimate_trains_a_larger_micro_batch():
    # the H100 run: 8 x 2 by the estimate in ~62 GiB free; 2.1-3.4 MB a token kept against 3.3 counted
    plan, args = _planned(8, False, 62, 0.7), _args()
    assert probe._choose_again(plan, args, _recipe(), object())
    assert (plan.micro_batch, plan.accumulation, plan.checkpointing) == (16, 1, False)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (16, 1)
    assert plan.predicted_peak_gib <= 62 and "probe step's measure" in plan.why


def test_a_measure_above_the_estimate_trains_a_smaller_micro_batch_instead_of_running_out_of_memory():
    plan = _planned(8, False, 62, 2.5)
    assert probe._choose_again(plan, _args(), _recipe(), object())
    assert (plan.micro_batch, plan.accumulation, plan.checkpointing) == (4, 4, False)


def test_checkpointing_planned_by_the_estimate_goes_off_where_the_measure_fits_the_recipes_micro_batch():
    plan = _planned(4, True, 6, 0.5)
    assert probe._choose_again(plan, _args(), _recipe(), object())
    assert (plan.micro_batch, plan.checkpointing) == (2, False)
    # nothing at the recipe's micro-batch fits without checkpointing: the estimate's split stays
    plan = _planned(4, True, 6, 0.9)
    assert not probe._choose_again(plan, _args(), _recipe(), object())
    assert (plan.micro_batch, plan.checkpointing) == (4, True) and "fits no larger split" in plan.why


@pytest.fixture
def tiny_lora_model(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from portaft.compat import model_dtype_kwargs

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, **model_dtype_kwargs(torch.float32))
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))


def test_the_probe_measures_the_longest_samples_and_leaves_the_model_and_generators_as_they_were(tiny_lora_model,
                                                                                                monkeypatch):
    from portaft.data.packing import flattening_collator

    model = tiny_lora_model.eval()
    rows = [{"input_ids": list(range(5, 5 + n)), "attention_mask": [1] * n, "labels": list(range(5, 5 + n))}
            for n in (7, 30, 12, 25)]
    lengths = [len(r["input_ids"]) for r in rows]
    monkeypatch.setattr(probe, "why_not", lambda *args: None)  # the CPU stands in for a device here
    memory = MemoryModel(ModelFacts.of(model), fixed=0, longest=30, fused_loss=False, fused_layers=False,
                         fsdp_own=None, budget=64 * GIB)
    plan = Execution("auto", 2, 8, False, dict(WRITTEN), "estimate", memory=memory)
    args = types.SimpleNamespace(device=torch.device("cpu"), bf16=False, fp16=False, per_device_train_batch_size=2,
                                 gradient_accumulation_steps=8, gradient_checkpointing=False)
    generator_before = torch.get_rng_state()
    probe.probe_and_replan(plan, model, flattening_collator(), rows, lengths, args, _recipe(), 1,
                           SavedTensorsMeter(model))
    assert plan.probe["measured"] and plan.probe["tokens"] == 30 + 25  # the two longest, flattened in one row
    assert 0 < plan.probe["kept_mb_per_token"] and memory.scale == pytest.approx(
        plan.probe["kept_mb_per_token"] * 1e6 / memory.facts.activation_bytes(False, False, False), rel=1e-2)
    assert torch.equal(torch.get_rng_state(), generator_before)  # dropout drew nothing the run will see
    assert all(p.grad is None for p in model.parameters()) and not model.training
    assert (plan.micro_batch, plan.accumulation) == (16, 1)  # 64 GiB holds the whole step


def test_no_probe_where_torch_does_not_count_the_devices_memory(tiny_lora_model):
    assert probe.meter_for(torch.device("cpu"), tiny_lora_model) is None
    plan = Execution("auto", 2, 8, True, dict(WRITTEN), "estimate", memory=None)
    args = types.SimpleNamespace(device=torch.device("cpu"))
    assert not probe.probe_and_replan(plan, tiny_lora_model, None, [], [], args, _recipe(), 1, None)
    assert plan.probe == {"measured": False, "why": "the split was not planned from memory"}
    assert execution.Execution.record(plan)["probe"] == plan.probe


class _OutOfMemory(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))

    def forward(self, **batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")


class _Broken(_OutOfMemory):
    def forward(self, **batch):
        raise RuntimeError("an attention kernel this device lacks\nand a second line")


@pytest.mark.parametrize("model, why", [
    (_OutOfMemory, "out of memory at 32 tokens without checkpointing"),
    (_Broken, "it failed (RuntimeError: an attention kernel this device lacks); the estimate's split is kept"),
])
def test_a_probe_that_fails_keeps_the_estimates_split_and_says_why(monkeypatch, model, why):
    monkeypatch.setattr(probe, "why_not", lambda *args: None)
    memory = MemoryModel(SEVEN_B, fixed=0, longest=4, fused_loss=True, fused_layers=True, fsdp_own=None,
                         budget=62 * GIB)
    plan = Execution("auto", 8, 2, False, dict(WRITTEN), "estimate", memory=memory)
    args = types.SimpleNamespace(device=torch.device("cpu"), bf16=False, fp16=False)
    rows = [{"input_ids": [1, 2, 3, 4], "attention_mask": [1] * 4, "labels": [1, 2, 3, 4]}] * 16
    model = model()
    assert not probe.probe_and_replan(plan, model, lambda rows: {"input_ids": torch.ones(len(rows), 4)}, rows,
                                      [4] * 16, args, _recipe(), 1, SavedTensorsMeter(model))
    assert plan.probe == {"measured": False, "why": why}
    assert (plan.micro_batch, plan.accumulation, memory.scale) == (8, 2, 1.0)
