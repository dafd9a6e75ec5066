"""plan: auto on real (tiny, CPU, float32) runs: another split of the same effective batch trains
the same losses as the recipe as written, and running out of memory in the first step retries
once with a smaller micro-batch. The CPU says nothing about its memory, so the device's budget
is stood in for (execution.memory_budget)."""

import json

import pytest
import torch
from transformers import TrainerCallback

import portaft
from helpers import plugin, use_plugins
from portaft.runner import execution

GIB = 2**30


def _seed_recipe(recipe_dict, tmp_path, name, **changes):
    """The seed tutorial's split (2 x 8, checkpointing) on 16 tiny conversations, 2 optimizer steps."""
    rows = [{"conversation": [{"input": f"第{i}个问题：" + "你好" * (i % 5 + 1), "output": "回答" * (i % 7 + 2)}]}
            for i in range(32)]
    data = tmp_path / "chats.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    return {**recipe_dict, "data": [{"path": str(data)}], "eval_prompts": [], **changes,
            "train": {**recipe_dict["train"], "output_dir": str(tmp_path / name), "per_device_train_batch_size": 2,
                      "gradient_accumulation_steps": 8, "gradient_checkpointing": True, "num_train_epochs": 1,
                      "max_steps": -1, "logging_steps": 1, "save_strategy": "no"}}


def _losses(result):
    return [entry["loss"] for entry in result.log_history if "loss" in entry]


needs_step_normalisation = pytest.mark.skipif(not execution.normalises_over_the_step(),
                                              reason="transformers < 4.46 keeps the recipe's split (tested below)")


def test_before_transformers_4_46_plan_auto_keeps_the_split(recipe_dict, tmp_path, monkeypatch):
    monkeypatch.setattr(execution, "normalises_over_the_step", lambda: False)
    monkeypatch.setattr(execution, "memory_budget", lambda device, processes: 64 * GIB)
    import types

    from portaft.recipe import Recipe

    recipe = Recipe.model_validate(_seed_recipe(recipe_dict, tmp_path, "old"))
    args = types.SimpleNamespace(device=types.SimpleNamespace(type="cuda"))
    plan = execution.plan_execution(recipe, args, torch.nn.Linear(1, 1), [10], 1, False)
    assert not plan.changed and "4.46" in plan.why


@needs_step_normalisation
def test_plan_auto_trains_the_losses_of_the_recipe_as_written(recipe_dict, tmp_path, monkeypatch):
    as_written = portaft.run(_seed_recipe(recipe_dict, tmp_path, "as-written", plan="as_written"), backend="cpu",
                             echo=lambda _: None)
    monkeypatch.setattr(execution, "memory_budget", lambda device, processes: 64 * GIB)  # a large device
    checkpointed = []
    use_plugins(monkeypatch, spy=plugin(register_callbacks=lambda register: register(_Checkpointed(checkpointed))))
    auto = portaft.run(_seed_recipe(recipe_dict, tmp_path, "auto"), backend="cpu", echo=lambda _: None)
    assert checkpointed == [False]  # the Trainer really trained without checkpointing

    assert len(_losses(auto)) == len(_losses(as_written)) == 2
    assert _losses(auto) == pytest.approx(_losses(as_written), rel=1e-3)
    record = json.loads((auto.output_dir / "portaft_run.json").read_text())["plan"]
    assert (record["micro_batch"], record["accumulation"], record["checkpointing"]) == (16, 1, False)
    assert record["written"] == {"micro_batch": 2, "accumulation": 8, "checkpointing": True}
    assert record["budget_gib"] == 64 and record["predicted_peak_gib"] > 0
    assert any(n.startswith("plan auto: micro-batch 2 x accumulation 8 -> 16 x 1") for n in auto.notes)
    effective = (auto.output_dir / "portaft_recipe.yaml").read_text()
    assert "per_device_train_batch_size: 16" in effective  # the effective recipe says what ran
    kept = json.loads((as_written.output_dir / "portaft_run.json").read_text())["plan"]
    assert (kept["micro_batch"], kept["accumulation"], kept["checkpointing"]) == (2, 8, True)


@needs_step_normalisation
def test_the_probe_step_measures_and_leaves_the_losses_as_they_were(recipe_dict, tmp_path, monkeypatch):
    """Bit for bit, with LoRA dropout (the unit test checks the generators and gradients themselves)."""
    from helpers import SavedTensorsMeter
    from portaft.runner import probe

    monkeypatch.setattr(execution, "memory_budget", lambda device, processes: 64 * GIB)  # a large device
    dropout = {**recipe_dict, "lora": {**recipe_dict["lora"], "dropout": 0.1}}
    unprobed = portaft.run(_seed_recipe(dropout, tmp_path, "unprobed"), backend="cpu", echo=lambda _: None)
    # the CPU's memory is not counted by torch: a meter of what autograd keeps stands in for the device's
    monkeypatch.setattr(probe, "meter_for", lambda device, model: SavedTensorsMeter(model))
    probed = portaft.run(_seed_recipe(dropout, tmp_path, "probed"), backend="cpu", echo=lambda _: None)
    assert _losses(probed) == _losses(unprobed) and len(_losses(probed)) == 2  # bit for bit
    record = json.loads((probed.output_dir / "portaft_run.json").read_text())["plan"]
    assert record["probe"]["measured"] and record["probe"]["kept_mb_per_token"] > 0
    assert record["probe"]["tokens"] > 16  # the 16 longest samples of the step, flattened in one row
    assert "probe step's measure" in record["why"] and (record["micro_batch"], record["accumulation"]) == (16, 1)
    kept = json.loads((unprobed.output_dir / "portaft_run.json").read_text())["plan"]["probe"]
    assert kept == {"measured": False, "why": "torch does not count the cpu device's memory"}


class _Checkpointed(TrainerCallback):
    def __init__(self, seen):
        self.seen = seen

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.seen.append(bool(model.is_gradient_checkpointing))


class _RunsOutAboveTwoSamples(TrainerCallback):
    """A device on which a micro-batch of more than 2 samples does not fit."""

    def on_step_begin(self, args, state, control, **kwargs):
        if args.per_device_train_batch_size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@needs_step_normalisation
def test_out_of_memory_in_the_first_step_retries_once_with_a_smaller_micro_batch(recipe_dict, tmp_path, monkeypatch):
    as_written = portaft.run(_seed_recipe(recipe_dict, tmp_path, "as-written", plan="as_written"), backend="cpu",
                             echo=lambda _: None)
    monkeypatch.setattr(execution, "memory_budget", lambda device, processes: 64 * GIB)
    use_plugins(monkeypatch, small_device=plugin(register_callbacks=lambda register: register(
        _RunsOutAboveTwoSamples())))
    with pytest.raises(torch.OutOfMemoryError):  # 16 -> 8 is still too large, and it retries only once
        portaft.run(_seed_recipe(recipe_dict, tmp_path, "twice"), backend="cpu", echo=lambda _: None)

    monkeypatch.setattr(execution, "_choose", lambda *args, **kwargs: (4, False))  # the memory model's guess: 4 fit
    retried = portaft.run(_seed_recipe(recipe_dict, tmp_path, "retried"), backend="cpu", echo=lambda _: None)
    record = json.loads((retried.output_dir / "portaft_run.json").read_text())["plan"]
    assert (record["micro_batch"], record["accumulation"]) == (2, 8)
    assert record["retries"] == ["CUDA out of memory. Tried to allocate 20.00 GiB"]
    assert any("out of device memory in the first step" in n for n in retried.notes)
    assert _losses(retried) == pytest.approx(_losses(as_written), rel=1e-3)


class _RunsOutInStepTwo(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 18.00 MiB")


@needs_step_normalisation
def test_out_of_memory_after_the_first_step_is_one_message_saying_what_to_change(recipe_dict, tmp_path, monkeypatch):
    from portaft.errors import UserError

    monkeypatch.setattr(execution, "memory_budget", lambda device, processes: 64 * GIB)
    use_plugins(monkeypatch, late=plugin(register_callbacks=lambda register: register(_RunsOutInStepTwo())))
    with pytest.raises(UserError, match=r"out of device memory in step 2 \(CUDA out of memory.*micro-batches of 16 "
                                        r"x 1 with gradient checkpointing off.*plan: as_written"):
        portaft.run(_seed_recipe(recipe_dict, tmp_path, "late"), backend="cpu", echo=lambda _: None)
