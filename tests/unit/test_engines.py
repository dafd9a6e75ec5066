"""train.fsdp / train.deepspeed: checked before anything starts, completed with notes (portaft/engines/)."""

import copy
import json
import types

import pytest
from helpers import cli

from portaft import engines
from portaft.backends.device import CPU, Device
from portaft.engines import deepspeed, fsdp
from portaft.errors import RecipeError
from portaft.recipe import Recipe, read_recipe

# the second CI environment (transformers 4.45, accelerate 1.0) has no FSDP2: there FSDP is refused as not installed
needs_fsdp2 = pytest.mark.skipif(fsdp.unavailable() is not None, reason=f"no FSDP2 here: {fsdp.unavailable()}")
GPU = Device("cuda", bf16=True, fp16=True, fused_optimizer="adamw_torch_fused", collectives="nccl")


@pytest.fixture(autouse=True)
def under_torchrun(monkeypatch):
    """Each process of an engine's run is one torchrun started (the checks ask)."""
    monkeypatch.setenv("LOCAL_RANK", "0")


@pytest.fixture
def deepspeed_installed(monkeypatch):
    """DeepSpeed is not installed in the test environments: these tests check what portaft
    does around it, as if it were."""
    monkeypatch.setattr(deepspeed, "not_installed", lambda: None)


def recipe_with(recipe_dict, **train):
    data = copy.deepcopy(recipe_dict)
    data["train"].update(train)
    return read_recipe(data)


def problems(recipe, device=GPU, processes=1):
    with pytest.raises(RecipeError) as caught:
        engines.complete(recipe, device, processes)
    return caught.value.problems


def test_deepspeed_that_is_not_installed_is_refused_with_the_command_that_installs_it(
        recipe_dict, write_recipe, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK")
    if deepspeed.not_installed() is None:
        pytest.skip("deepspeed is installed here")
    done = cli("validate", write_recipe(recipe_dict), "train.deepspeed=zero3")
    assert done.returncode == 2, done.stderr
    assert "train.deepspeed: DeepSpeed is not installed in this Python. Install it with `pip install deepspeed`" \
        in done.stderr
    assert "Traceback" not in done.stderr


def test_a_deepspeed_value_that_is_neither_a_preset_nor_a_file_is_refused(recipe_dict, tmp_path, deepspeed_installed):
    assert problems(recipe_with(recipe_dict, deepspeed="zero4")) == [
        "train.deepspeed: 'zero4' is neither a preset (zero2, zero3, zero3_offload) nor a DeepSpeed JSON file. Name "
        "a preset or give the file's path."]
    missing = tmp_path / "ds.json"
    assert problems(recipe_with(recipe_dict, deepspeed=str(missing)))[0].startswith(f"train.deepspeed: {missing}: no such file")


@pytest.mark.parametrize("preset,zero3,offload", [("zero2", False, False), ("zero3", True, False),
                                                  ("zero3_offload", True, True)])
def test_a_named_preset_becomes_its_shipped_file_which_accelerate_reads_as_that_stage(
        recipe_dict, deepspeed_installed, preset, zero3, offload):
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    recipe = recipe_with(recipe_dict, deepspeed=preset)
    notes = engines.complete(recipe, GPU, 1)
    path = recipe.train["deepspeed"]
    assert path == str(deepspeed.preset_path(preset)) and notes[0].startswith(f"train.deepspeed: {preset} -> {path}")
    config = HfDeepSpeedConfig(path)
    assert (config.is_zero3(), config.is_offload()) == (zero3, offload)
    # batch sizes, accumulation and precision come from the train section, never disagree with it
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config.get_value(key) == "auto"
    assert config.get_value("bf16.enabled") == "auto"


def test_fsdp_and_deepspeed_on_the_cpu_are_refused_with_the_reason(recipe_dict, deepspeed_installed):
    said = problems(recipe_with(recipe_dict, fsdp="full_shard auto_wrap"), CPU)
    assert said[:1] == ["train.fsdp: FSDP does not run on the CPU here: accelerate would train plain DDP under the "
                    "sharding key, unsharded, and portaft never does that silently. Remove train.fsdp (--nproc N "
                    "trains with DDP), or run on a CUDA GPU or an Ascend NPU."]
    assert "portaft runs DeepSpeed on CUDA GPUs and Ascend NPUs, not on the CPU" in \
        problems(recipe_with(recipe_dict, deepspeed="zero2"), CPU)[0]


def test_both_engines_at_once_and_fsdp1_strategies_are_refused(recipe_dict, deepspeed_installed):
    assert problems(recipe_with(recipe_dict, fsdp="auto", deepspeed="zero2"))[0].startswith(
        "train.fsdp: set together with train.deepspeed")
    assert "hybrid_shard is an FSDP1 strategy" in problems(recipe_with(recipe_dict, fsdp="hybrid_shard"))[0]
    assert "train.fsdp_config.version: 1: portaft sets up FSDP2 only" in \
        problems(recipe_with(recipe_dict, fsdp="auto", fsdp_config={"version": 1}))[0]


@needs_fsdp2
def test_fsdp_auto_gives_fsdp2_around_the_models_decoder_layer_with_sharded_checkpoints(recipe_dict):
    """The effective recipe's spelling is what transformers turns into accelerate's FSDP2
    plugin, without the deprecated string form; each setting is a note."""
    from transformers import TrainingArguments

    recipe = recipe_with(recipe_dict, fsdp="auto", gradient_checkpointing=True, bf16=True)
    notes = engines.complete(recipe, GPU, 2)
    train = recipe.train
    assert train["fsdp"] is True and train["gradient_checkpointing"] is False
    assert train["fsdp_config"] == {"version": 2, "reshard_after_forward": True,
                                    "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "state_dict_type": "SHARDED_STATE_DICT",
                                    "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                                    "activation_checkpointing": True}
    assert "train.fsdp_config.transformer_layer_cls_to_wrap: ['LlamaDecoderLayer'] (the model's decoder layer class " \
           "(model._no_split_modules))" in notes
    assert any(note.startswith("FSDP mixed precision: bf16") for note in notes)
    given = types.SimpleNamespace(fsdp=train["fsdp"], fsdp_config=dict(train["fsdp_config"]), activation_checkpointing=False)
    plugin = TrainingArguments._process_fsdp_args(given)
    assert plugin["fsdp_version"] == 2 and plugin["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
    assert plugin["state_dict_type"] == "SHARDED_STATE_DICT" and plugin["activation_checkpointing"] is True
    assert plugin["reshard_after_forward"] is True
    # the effective recipe (fsdp: true) reads back as a recipe
    assert read_recipe(recipe.model_dump()).train["fsdp"] is True


@needs_fsdp2
def test_fsdp_settings_the_recipe_wrote_are_kept(recipe_dict):
    recipe = recipe_with(recipe_dict, fsdp="shard_grad_op offload",
                         fsdp_config={"fsdp_state_dict_type": "FULL_STATE_DICT"})
    engines.complete(recipe, GPU, 2)
    config = recipe.train["fsdp_config"]
    assert config["state_dict_type"] == "FULL_STATE_DICT"
    assert config["reshard_after_forward"] is False and config["cpu_offload"] is True


@needs_fsdp2
def test_the_final_save_under_sharded_checkpoints_gathers_a_full_state_dict():
    from accelerate import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
    trainer = types.SimpleNamespace(is_fsdp_enabled=True,
                                    accelerator=types.SimpleNamespace(state=types.SimpleNamespace(fsdp_plugin=plugin)))
    fsdp.full_state_for_final_save(trainer)
    assert str(plugin.state_dict_type) == "StateDictType.FULL_STATE_DICT"


def test_qlora_under_sharded_weights_stores_4_bit_weights_as_the_compute_dtype_or_is_refused(
        recipe_dict, deepspeed_installed):
    recipe_dict["quantization"] = {"bits": 4}
    recipe = recipe_with(recipe_dict, deepspeed="zero3")
    assert "quantization.storage: auto -> bf16 (DeepSpeed ZeRO-3 shards the 4-bit weights as bf16 tensors: " \
           "bnb_4bit_quant_storage)" in engines.complete(recipe, GPU, 2)
    recipe_dict["quantization"] = {"bits": 4, "storage": "uint8"}
    assert "quantization.storage: uint8: DeepSpeed ZeRO-3 shards tensors" in \
        problems(recipe_with(recipe_dict, deepspeed="zero3"))[0]
    recipe_dict["quantization"] = {"bits": 8}
    assert problems(recipe_with(recipe_dict, deepspeed="zero3"))[0].startswith(
        "quantization.bits: 8-bit weights cannot be sharded by DeepSpeed ZeRO-3")
    # ZeRO-2 keeps the weights whole: 4-bit stays in bitsandbytes' own storage
    recipe_dict["quantization"] = {"bits": 4}
    recipe = recipe_with(recipe_dict, deepspeed="zero2")
    engines.complete(recipe, GPU, 2)
    assert recipe.quantization.storage == "auto"


@needs_fsdp2
def test_eval_prompts_with_weights_split_over_processes_are_refused(recipe_dict, deepspeed_installed):
    recipe_dict["eval_prompts"] = ["hi"]
    assert problems(recipe_with(recipe_dict, fsdp="auto"), processes=2)[0].startswith(
        "eval_prompts: the answers are generated by the first process alone, while FSDP splits the weights over all 2")
    engines.complete(recipe_with(recipe_dict, fsdp="auto"), GPU, 1)  # one process holds every shard
    # ZeRO-3 loads the weights split (zero.Init) even for one process: nothing but its engine runs them
    assert problems(recipe_with(recipe_dict, deepspeed="zero3"), processes=1)[0].startswith(
        "eval_prompts: ZeRO-3 loads the weights already split (zero.Init)")
    engines.complete(recipe_with(recipe_dict, deepspeed="zero2"), GPU, 2)  # ZeRO-2 keeps the weights whole


@needs_fsdp2
def test_an_engine_outside_torchrun_is_refused_with_what_starts_it(recipe_dict, monkeypatch, deepspeed_installed):
    monkeypatch.delenv("LOCAL_RANK")
    for key, value in (("fsdp", "auto"), ("deepspeed", "zero2")):
        assert problems(recipe_with(recipe_dict, **{key: value}))[0] == (
            f"train.{key}: FSDP and DeepSpeed train in processes that torchrun starts, even one: run `portaft run "
            "RECIPE` (it starts them), or your script with `torchrun --nproc-per-node N script.py`.")


def test_a_recipe_one_process_would_refuse_stops_the_launcher_before_any_process_starts(
        recipe_dict, write_recipe, monkeypatch):
    """`--nproc 2` with QLoRA on the CPU: one clean message and exit 2, not torchrun's
    ChildFailedError from each process."""
    monkeypatch.delenv("LOCAL_RANK")
    done = cli("run", write_recipe(recipe_dict), "--nproc", "2", "--backend", "cpu", "quantization.bits=4")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("portaft: error: quantization: 4-bit loading cannot run with the cpu backend") == 1
    assert "launching" not in done.stdout and "Traceback" not in done.stderr
    # with one process too: an engine is started through torchrun, so checked by the launcher
    done = cli("run", write_recipe(recipe_dict), "--backend", "cpu", "train.fsdp=full_shard auto_wrap")
    assert done.returncode == 2 and "train.fsdp: FSDP does not run on the CPU here" in done.stderr
    assert "launching" not in done.stdout and "Traceback" not in done.stderr


def test_the_shipped_presets_are_package_data():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    assert "presets/*.json" in pyproject["tool"]["setuptools"]["package-data"]["portaft.engines"]
    for name in deepspeed.PRESETS:
        assert json.loads(deepspeed.preset_path(name).read_text(encoding="utf-8"))["zero_optimization"]["stage"] in (2, 3)


def test_node_arguments_that_cannot_make_one_run_are_refused_before_torchrun():
    from portaft.cli import nodes
    from portaft.errors import UserError

    def args(**given):
        return types.SimpleNamespace(**{"nproc": 2, "nnodes": 2, "node_rank": 0, "master_addr": "10.0.0.1",
                                        "master_port": 29500, **given})

    assert nodes.torchrun_arguments(args()) == ["--nnodes=2", "--node-rank=0", "--master-addr=10.0.0.1",
                                                "--master-port=29500", "--nproc-per-node=2"]
    assert nodes.torchrun_arguments(args(nnodes=1)) == ["--standalone", "--nproc-per-node=2"]
    for wrong, said in ((args(node_rank=2), "--node-rank 2: with --nnodes 2 give 0 to 1"),
                        (args(master_addr=None), "--nnodes 2: give --master-addr"),
                        (args(nnodes=0), "--nnodes 0: give a number of machines")):
        with pytest.raises(UserError, match=said):
            nodes.torchrun_arguments(wrong)


@needs_fsdp2
def test_validate_checks_the_engines_in_the_users_shell(recipe_dict, write_recipe, monkeypatch, deepspeed_installed):
    """validate runs outside torchrun, as the launcher does: no 'start it through torchrun'."""
    monkeypatch.delenv("LOCAL_RANK")
    engines.check(recipe_with(recipe_dict, fsdp="auto"), None, 1, launching=True)
    engines.check(recipe_with(recipe_dict, deepspeed="zero3"), None, 1, launching=True)


def test_the_trainable_summary_counts_weights_that_zero3_loaded_split():
    """Under ZeRO-3 each weight is an empty tensor with its size in `ds_numel` (DeepSpeed's
    attribute, which peft counts too): the summary counts those, not zero of zero."""
    import torch

    from portaft.runner.model import trainable_summary

    model = torch.nn.Linear(4, 2)
    model.weight.data, model.bias.data = torch.empty(0), torch.empty(0)
    model.weight.ds_numel, model.bias.ds_numel = 8, 2
    model.bias.requires_grad_(False)
    assert trainable_summary(model) == "trainable parameters: 8 of 10 (80.00%)"


def test_under_zero3_the_adapter_is_cast_to_the_models_dtype_and_the_fused_loss_steps_aside():
    """ZeRO-3 computes without autocast (a float32 LoRA beside bfloat16 layers failed in its first
    matmul on an H100), and no weight-sharding engine has the LM head gathered when Liger reads it."""
    import torch

    from portaft.runner.model import _adapter_in_the_models_dtype_under_zero3
    from portaft.speed_ups import Training, fused_loss

    def recipe(train):
        return Recipe.model_validate({"model": {"name_or_path": "m", "dtype": "bfloat16"}, "data": [{"path": "d"}],
                                      "train": {"output_dir": "/tmp/unused", **train}})

    model = torch.nn.Sequential(torch.nn.Linear(4, 4).to(torch.bfloat16), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    assert _adapter_in_the_models_dtype_under_zero3(model, recipe({"deepspeed": "zero2"})) is None
    assert model[1].weight.dtype == torch.float32
    note = _adapter_in_the_models_dtype_under_zero3(model, recipe({"deepspeed": "zero3"}))
    assert "2 weight tensors in bfloat16" in note and model[1].weight.dtype == torch.bfloat16
    for train, engine in (({"deepspeed": "zero3"}, "DeepSpeed ZeRO-3"), ({"fsdp": "full_shard"}, "FSDP")):
        reason = fused_loss.applies(Training(recipe(train), device=None, processes=1))
        assert reason.startswith(f"not with {engine}: the LM head's weight is gathered only")
