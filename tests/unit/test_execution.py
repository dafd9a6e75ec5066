"""plan: auto (issue 28): how the effective batch is split on a device, decided from a memory
model, and whether compiling the layers pays for the run's length."""

import types

import pytest

from portaft.errors import UserError
from portaft.recipe import Recipe
from portaft.runner import execution
from portaft.runner.execution import Execution, ModelFacts, apply_execution, plan_execution, smaller
from portaft.speed_ups import Training, compiled_layers

GIB = 2**30


@pytest.fixture(autouse=True)
def step_normalising_transformers(monkeypatch):
    """The planner as on transformers >= 4.46 (the second CI environment has 4.45, where it keeps
    the recipe's split: tests/runs/test_plan_runs.py)."""
    monkeypatch.setattr(execution, "normalises_over_the_step", lambda: True)


def _recipe(**changes) -> Recipe:
    train = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 8, "gradient_checkpointing": True,
             "output_dir": "/tmp/unused", **changes.pop("train", {})}
    return Recipe.model_validate({"model": {"name_or_path": "m"}, "data": [{"path": "d.jsonl"}], "train": train,
                                  **changes})


# a DeepSeek-LLM-7B-shaped decoder's facts: bf16, LoRA r 64 on all linear layers (150M weights)
SEVEN_B = ModelFacts(hidden=4096, kv_hidden=4096, ffn=11008, layers=30, vocab=129280, dtype_bytes=2,
                     trainable_bytes=150_000_000 * 2, lora_rank=64)


def _plan(recipe, budget_gib, lengths=(1024, 300, 200), facts=SEVEN_B, fused=False, monkeypatch=None):
    monkeypatch.setattr(execution, "memory_budget", lambda device, processes: None if budget_gib is None
                        else budget_gib * GIB)
    monkeypatch.setattr(ModelFacts, "of", classmethod(lambda cls, model: facts))
    args = types.SimpleNamespace(device=types.SimpleNamespace(type="cuda"))
    return plan_execution(recipe, args, object(), list(lengths), 1, fused)


def test_a_large_device_trains_the_seed_recipe_without_checkpointing_at_a_larger_micro_batch(monkeypatch):
    plan = _plan(_recipe(), 110, monkeypatch=monkeypatch)
    assert (plan.micro_batch, plan.accumulation, plan.checkpointing) == (8, 2, False)
    assert plan.micro_batch * plan.accumulation == 16  # the effective batch is the recipe's
    assert plan.predicted_peak_gib <= 110 and plan.changed


def test_the_split_follows_the_device_memory(monkeypatch):
    splits = {budget: (p.micro_batch, p.checkpointing) for budget in (300, 64, 24, 12, 1)
              for p in [_plan(_recipe(), budget, monkeypatch=monkeypatch)]}
    assert splits[300] == (16, False)
    assert splits[64] == (4, False)  # 8 would need ~71 GiB by the estimate
    assert splits[24] == (2, False)  # the recipe's own micro-batch, without checkpointing
    assert splits[12] == (4, True)  # not even that without checkpointing: the largest that fits with it
    assert splits[1] == (2, True)  # nothing fits by the estimate: kept as written (then the OOM retry)


def test_the_fused_loss_leaves_out_the_logits(monkeypatch):
    assert SEVEN_B.activation_bytes(False, True) < SEVEN_B.activation_bytes(False, False)
    assert SEVEN_B.activation_bytes(True, False) < SEVEN_B.activation_bytes(False, True)
    assert _plan(_recipe(), 64, fused=True, monkeypatch=monkeypatch).micro_batch == 8
    # Liger's (or compiled layers') norms and SwiGLU keep less: the H100 run's 62.8 GiB gave 8 x 2
    # (31.2 GiB measured), an H200's ~120 GiB gives the whole step in one micro-batch
    assert SEVEN_B.activation_bytes(False, True, True) < 0.6 * SEVEN_B.activation_bytes(False, True)
    monkeypatch.setattr(execution, "memory_budget", lambda device, processes: 120 * GIB)
    args = types.SimpleNamespace(device=types.SimpleNamespace(type="cuda"))
    h200 = plan_execution(_recipe(), args, object(), [1024, 300], 1, fused_loss=True, fused_layers=True)
    assert (h200.micro_batch, h200.checkpointing) == (16, False)
    monkeypatch.setattr(execution, "memory_budget", lambda device, processes: 62.8 * GIB)
    assert plan_execution(_recipe(), args, object(), [1024, 300], 1, True, True).micro_batch == 8


@pytest.mark.parametrize("changes, budget, why", [
    ({"plan": "as_written"}, 300, "plan: as_written"),
    ({"packing": True}, 300, "packed batches"),
    ({}, None, "does not say how much memory"),
])
def test_the_recipes_split_is_kept(monkeypatch, changes, budget, why):
    plan = _plan(_recipe(**changes), budget, monkeypatch=monkeypatch)
    assert (plan.micro_batch, plan.accumulation, plan.checkpointing) == (2, 8, True) and not plan.changed
    assert why in plan.why


def test_the_chosen_split_is_set_on_the_arguments_and_the_effective_recipe_with_a_note(monkeypatch):
    recipe = _recipe()
    plan = _plan(recipe, 110, monkeypatch=monkeypatch)
    args = types.SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=8,
                                 gradient_checkpointing=True)
    [note] = apply_execution(plan, args, recipe, object())
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.gradient_checkpointing) == (
        8, 2, False)
    assert recipe.train["per_device_train_batch_size"] == 8 and recipe.train["gradient_checkpointing"] is False
    assert note.startswith("plan auto: micro-batch 2 x accumulation 8 -> 8 x 2, gradient checkpointing on -> off")
    assert plan.record()["written"] == {"micro_batch": 2, "accumulation": 8, "checkpointing": True}


def test_after_running_out_of_memory_the_micro_batch_halves_then_checkpointing_comes_on():
    args = types.SimpleNamespace()
    recipe = _recipe()
    plan = Execution("auto", 2, 8, False, {"micro_batch": 2, "accumulation": 8, "checkpointing": True}, "")
    assert "out of device memory in the first step (CUDA out of memory)" in smaller(
        plan, args, recipe, object(), "CUDA out of memory")[0]
    assert (plan.micro_batch, plan.accumulation, plan.checkpointing) == (1, 16, False)
    smaller(plan, args, recipe, object(), "again")
    assert (plan.micro_batch, plan.accumulation, plan.checkpointing) == (1, 16, True)
    with pytest.raises(UserError, match="micro-batch 1 with gradient checkpointing"):
        smaller(plan, args, recipe, object(), "and again")


def _training(recipe, tokens, samples=1000, processes=1):
    return Training(recipe, device=None, processes=processes, tokens=tokens, samples=samples)


def test_layers_compile_under_plan_auto_only_where_the_run_is_long_enough_to_pay_for_it():
    no_checkpoints = {"gradient_checkpointing": False, "num_train_epochs": 1}
    short = _training(_recipe(train=no_checkpoints), tokens=700_000)  # the seed tutorial's 2,400 conversations
    assert "compiling pays from about 5M" in compiled_layers.applies(short)
    assert compiled_layers.applies(_training(_recipe(train=no_checkpoints), tokens=16_000_000)) is None
    as_written = _training(_recipe(train=no_checkpoints, plan="as_written"), tokens=700_000)
    assert compiled_layers.applies(as_written) is None
    # max_steps counts: 2,000 steps of 16 samples of 200 tokens is 6.4M tokens
    steps = _training(_recipe(train={**no_checkpoints, "max_steps": 2000}), tokens=200_000, samples=1000)
    assert compiled_layers.applies(steps) is None
    # several processes share the data
    assert compiled_layers.applies(_training(_recipe(train=no_checkpoints), 6_000_000, processes=2)) is not None


def test_a_speed_up_is_turned_off_by_name_and_a_misspelt_name_is_refused(recipe_dict):
    from portaft.plugins import get_plugins
    from portaft.runner.notes import Notes
    from portaft.runner.resolve import resolve

    said = []
    # compiled_layers is the cuda backend's: naming it keeps a recipe portable to the cpu backend
    recipe = {**recipe_dict, "speed_ups": {"frozen_objects": False, "compiled_layers": False}}
    resolved = resolve(recipe, "cpu", [], get_plugins(), Notes(said.append))
    assert "frozen_objects" not in [s.NAME for s in resolved.speed_ups]
    assert "portaft: speed-up frozen_objects: not used (turned off: speed_ups.frozen_objects: false)" in said
    with pytest.raises(UserError, match="speed_ups: compiled_layer: no installed backend offers"):
        resolve({**recipe_dict, "speed_ups": {"compiled_layer": False}}, "cpu", [], get_plugins(), Notes(said.append))


def test_weights_the_trainer_has_still_to_move_to_the_device_count_against_its_memory(monkeypatch):
    """The H100's 24 GiB run planned with 22 GiB free while the 7B weights (12.85 GiB) were still
    on the host, and ran out of memory in step 3."""
    import torch

    monkeypatch.setattr(execution, "memory_budget", lambda device, processes: 22 * GIB)
    monkeypatch.setattr(ModelFacts, "of", classmethod(lambda cls, model: SEVEN_B))
    on_host = torch.nn.Linear(1, 1)
    assert execution.bytes_off(on_host, types.SimpleNamespace(type="cuda")) == 8  # a weight and a bias, fp32
    assert execution.bytes_off(on_host, types.SimpleNamespace(type="cpu")) == 0
    monkeypatch.setattr(execution, "bytes_off", lambda model, device: int(12.85 * GIB))  # the 7B's weights
    args = types.SimpleNamespace(device=types.SimpleNamespace(type="cuda"))
    plan = plan_execution(_recipe(), args, on_host, [1024, 300], 1, fused_loss=True, fused_layers=True)
    assert (plan.micro_batch, plan.checkpointing) == (2, False) and plan.predicted_peak_gib <= 22


def _sharded_plan(train, processes, budget_gib, monkeypatch):
    """The 7B's 14 GB of bf16 weights still on the host (FSDP and DeepSpeed place them themselves)."""
    monkeypatch.setattr(execution, "memory_budget", lambda device, processes: budget_gib * GIB)
    monkeypatch.setattr(execution, "bytes_off", lambda model, device: 14e9)
    monkeypatch.setattr(ModelFacts, "of", classmethod(lambda cls, model: SEVEN_B))
    args = types.SimpleNamespace(device=types.SimpleNamespace(type="cuda"))
    return plan_execution(_recipe(train=train), args, object(), [1024, 300], processes, fused_loss=True)


def test_the_memory_model_divides_what_a_sharding_engine_splits_over_its_processes(monkeypatch):
    zero3 = {"deepspeed": {"zero_optimization": {"stage": 3}}}
    zero2 = {"deepspeed": {"zero_optimization": {"stage": 2}}}
    plain = _sharded_plan({}, 4, 40, monkeypatch)
    split3 = _sharded_plan(zero3, 4, 40, monkeypatch)
    # ZeRO-3 keeps a quarter of the weights (and two gathered layers) on each of 4 devices: room for more samples
    assert split3.micro_batch > plain.micro_batch
    assert "DeepSpeed ZeRO-3 over 4 process(es) counted" in split3.why
    assert _sharded_plan(zero3, 1, 40, monkeypatch).micro_batch == plain.micro_batch  # one process: nothing splits
    # ZeRO-2 keeps the weights whole: only the (small) LoRA gradients and optimizer state divide
    split2 = _sharded_plan(zero2, 4, 40, monkeypatch)
    assert split2.micro_batch == plain.micro_batch
    assert split2.predicted_peak_gib < plain.predicted_peak_gib


def test_under_fsdp_the_plan_keeps_fsdps_own_activation_checkpointing_and_chooses_the_micro_batch(monkeypatch):
    # engines/fsdp.py has moved the recipe's gradient_checkpointing into fsdp_config
    fsdp = {"fsdp": True, "fsdp_config": {"activation_checkpointing": True}, "gradient_checkpointing": False}
    plan = _sharded_plan(fsdp, 2, 30, monkeypatch)
    assert plan.checkpointing is False and plan.micro_batch == 16  # checkpointed activations are small
    assert "FSDP's own activation checkpointing on (kept)" in plan.why
    uncheckpointed = _sharded_plan({**fsdp, "fsdp_config": {}}, 2, 30, monkeypatch)
    assert uncheckpointed.micro_batch < 16 and uncheckpointed.checkpointing is False
    recipe = _recipe(train=fsdp)
    args = types.SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=8,
                                 gradient_checkpointing=False)
    apply_execution(plan, args, recipe, object())
    assert args.gradient_checkpointing is False and recipe.train["fsdp_config"]["activation_checkpointing"] is True


def test_the_shard_group_of_each_engine_setting():
    from portaft.engines import shards

    def of(train, processes=4):
        return shards.of(_recipe(train=train), processes)

    assert of({}) == shards.Shards("")
    assert (of({"fsdp": True}).weights, of({"fsdp": True}).gathered_layers) == (4, 2)
    grad_op = of({"fsdp": True, "fsdp_config": {"reshard_after_forward": False}})
    assert (grad_op.weights, grad_op.gradients, grad_op.optimizer) == (1, 4, 4)
    assert of({"fsdp": True, "fsdp_config": {"cpu_offload": True}}).weights is None
    assert of({"deepspeed": "zero2"}).weights == 1 and of({"deepspeed": "zero2"}).optimizer == 4
    offload = of({"deepspeed": "zero3_offload"})
    assert (offload.weights, offload.gradients, offload.optimizer) == (None, 4, None)
    assert of({"deepspeed": {"zero_optimization": {"stage": 1}}}).gradients == 1


def test_a_changed_split_reaches_deepspeeds_config(tmp_path):
    pytest.importorskip("deepspeed")
    from transformers import TrainingArguments

    from portaft.engines import deepspeed, shards

    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=8,
                             deepspeed=str(deepspeed.preset_path("zero2")), report_to="none")
    args.per_device_train_batch_size, args.gradient_accumulation_steps = 8, 2
    shards.rederive_deepspeed_config(args)
    assert args.hf_deepspeed_config.config["train_micro_batch_size_per_gpu"] == 8
    assert args.hf_deepspeed_config.config["gradient_accumulation_steps"] == 2
