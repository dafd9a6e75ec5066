"""Backend discovery, selection order and unavailability messages."""

import importlib.metadata
import types

import pytest

from helpers import use_plugins
from portaft import BackendUnavailable, UserError, get_backend, hookimpl, load_recipe
from portaft.plugins import Plugins, get_plugins
from portaft.protocols import Backend


def test_builtin_backends_come_from_entry_points():
    rows = {row["name"]: row for row in get_plugins().describe_backends()}
    assert {"cpu", "cuda", "npu"} <= set(rows)
    assert rows["cpu"]["available"] is True
    assert all(rows[name]["distribution"] == "portaft" for name in ("cpu", "cuda", "npu"))
    assert rows["npu"]["priority"] > rows["cuda"]["priority"] > rows["cpu"]["priority"]


def test_builtin_backends_satisfy_the_protocol():
    for name in ("cpu", "cuda", "npu"):
        assert isinstance(get_backend(name), Backend)


def test_npu_says_why_it_is_unavailable():
    npu = get_backend("npu")
    assert npu.is_available() is False
    assert "torch_npu is not installed" in npu.unavailable_reason()


def test_asking_for_an_unavailable_backend_never_falls_back():
    with pytest.raises(BackendUnavailable, match=r"backend 'npu' is not available: torch_npu is not installed.*does not fall back"):
        get_plugins().select_backend("npu")


def test_unknown_backend_lists_known_ones():
    with pytest.raises(UserError, match=r"unknown backend 'tpu'. Known backends: npu, cuda, cpu"):
        get_backend("tpu")


class FakeBackend:
    """A backend written without any portaft base class."""

    device_type = "cpu"
    distributed_backend = "gloo"

    def __init__(self, name, priority, available=True):
        self.name, self.priority, self.available = name, priority, available

    def is_available(self):
        return self.available

    def unavailable_reason(self):
        return None if self.available else "the fake device is unplugged"

    def resolve(self, recipe):
        return recipe, []

    load_tokenizer = load_model = training_arguments = trainer = collator = device_for = speed_ups = (
        lambda self, *a, **k: None)


def plugin_with(*backends):
    @hookimpl
    def register_backends(register):
        for backend in backends:
            register(backend)

    return types.SimpleNamespace(register_backends=register_backends)


@pytest.fixture
def with_fakes(monkeypatch):
    def install(*backends):
        return use_plugins(monkeypatch, fakes=plugin_with(*backends))

    return install


def test_auto_picks_the_highest_priority_available_backend(with_fakes, recipe_dict):
    with_fakes(FakeBackend("fast", 500, available=False), FakeBackend("medium", 200))
    assert get_plugins().choose_backend(load_recipe(recipe_dict)).name == "medium"


def test_selection_order_argument_then_recipe_then_environment(with_fakes, recipe_dict, monkeypatch):
    with_fakes(FakeBackend("a", 1), FakeBackend("b", 2), FakeBackend("c", 3))
    monkeypatch.setenv("PORTAFT_BACKEND", "a")
    assert get_plugins().choose_backend(load_recipe(recipe_dict)).name == "a"  # environment beats auto
    assert get_plugins().choose_backend(load_recipe({**recipe_dict, "backend": "b"})).name == "b"  # recipe beats environment
    assert get_plugins().choose_backend(load_recipe({**recipe_dict, "backend": "b"}), "cpu").name == "cpu"  # argument beats all


def test_a_backend_missing_members_is_refused_with_a_reason(with_fakes):
    incomplete = types.SimpleNamespace(name="half", priority=1)
    plugins = with_fakes(incomplete)
    assert "half" not in plugins.backends
    assert any("backend 'half'" in p and "lacks device_type" in p for p in plugins.problems)


def test_duplicate_backend_name_keeps_the_first(with_fakes):
    plugins = with_fakes(FakeBackend("cpu", 999))
    assert plugins.backends["cpu"].priority == 0
    assert any("already registers that name" in p for p in plugins.problems)


def test_a_plugin_that_fails_to_import_is_reported_and_others_still_load():
    real = [ep for ep in importlib.metadata.entry_points(group="portaft") if ep.name == "cpu"]
    broken = importlib.metadata.EntryPoint(name="broken", value="no_such_module_anywhere", group="portaft")
    plugins = Plugins(entry_points=[broken, *real])
    info = {i.name: i for i in plugins.info}
    assert "ModuleNotFoundError" in info["broken"].error
    assert info["cpu"].error is None and info["cpu"].hooks == ["register_backends"]
    assert list(plugins.backends) == ["cpu"]


def test_a_plugin_with_a_misspelled_hook_is_reported(tmp_path, monkeypatch):
    (tmp_path / "typo_plugin.py").write_text(
        "from portaft import hookimpl\n\n@hookimpl\ndef register_backend(register):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(name="typo", value="typo_plugin", group="portaft")
    plugins = Plugins(entry_points=[ep])
    assert "hook portaft does not have" in plugins.info[0].error


def test_load_plugins_env_var_limits_third_party_plugins(monkeypatch):
    monkeypatch.setenv("PORTAFT_LOAD_PLUGINS", "")
    names = {i.name for i in Plugins().info}
    assert {"cpu", "cuda", "npu", "templates"} <= names  # portaft's own always load


def test_cpu_backend_resolve_reports_every_change(recipe_dict):
    recipe_dict["train"]["bf16"] = True
    effective, notes = get_backend("cpu").resolve(load_recipe(recipe_dict))
    assert effective.train["bf16"] is False and effective.train["use_cpu"] is True
    assert effective.model.dtype == "float32"
    assert any(n.startswith("train.bf16: true -> false") for n in notes)
    assert any(n.startswith("model.dtype: auto -> float32") for n in notes)
    assert any(n.startswith("train.use_cpu: true") for n in notes)


def test_a_gpu_trains_in_bf16_where_it_can_and_falls_back_to_fp16(recipe_dict):
    from portaft.backends import Device
    from portaft.backends.cuda import CudaBackend

    def gpu(bf16):
        class Gpu(CudaBackend):
            def device(self):
                return Device("cuda", bf16=bf16, fp16=True, fused_optimizer="adamw_torch_fused", collectives="nccl")
        return Gpu()

    recipe = load_recipe(recipe_dict)
    effective, _ = gpu(True).resolve(recipe)
    assert effective.train["bf16"] is True and effective.model.dtype == "bfloat16"
    effective, notes = gpu(False).resolve(recipe)
    assert effective.train["fp16"] is True and effective.model.dtype == "float16"
    effective, notes = gpu(False).resolve(load_recipe({**recipe_dict, "train": {**recipe_dict["train"], "bf16": True}}))
    assert effective.train == {**effective.train, "bf16": False, "fp16": True}
    assert "has no bfloat16" in notes[0]
    assert recipe.train.get("bf16") is None  # the user's recipe itself is never modified


def test_queue_ahead_changes_the_defaults_that_wait_for_the_gpu_unless_the_recipe_sets_them(recipe_dict):
    """The queue_ahead speed-up (offered by cuda): two TrainingArguments defaults that wait for
    the GPU every micro-batch are changed, said in its note; a value the recipe sets is kept;
    the arguments build (transformers reads them)."""
    from transformers import TrainingArguments

    from portaft.backends.device import CPU
    from portaft.speed_ups import SETTINGS, Training, apply_stage, queue_ahead

    def resolved(train):
        effective = load_recipe({**recipe_dict, "train": train})
        return effective, apply_stage([queue_ahead], SETTINGS, Training(effective, CPU, 1))

    effective, [note] = resolved(recipe_dict["train"])
    assert effective.train["logging_nan_inf_filter"] is False
    assert effective.train["accelerator_config"] == {"non_blocking": True}
    assert note.startswith("speed-up queue_ahead: train.logging_nan_inf_filter: unset -> false")
    assert "; train.accelerator_config: unset -> {non_blocking: true}" in note
    arguments = {**effective.train, "use_cpu": True, "bf16": False, "fp16": False}
    assert TrainingArguments(**arguments).accelerator_config.non_blocking is True

    effective, [note] = resolved({**recipe_dict["train"], "logging_nan_inf_filter": True, "dataloader_pin_memory": False})
    assert effective.train["logging_nan_inf_filter"] is True and "accelerator_config" not in effective.train
    assert note.startswith("speed-up queue_ahead: not used (the recipe sets logging_nan_inf_filter")
    assert queue_ahead not in get_backend("cpu").speed_ups(effective)
    assert queue_ahead in get_backend("cuda").speed_ups(effective)


def test_a_renamed_training_argument_is_accepted_and_renamed_with_a_note(recipe_dict):
    """evaluation_strategy (transformers < 4.41) and eval_strategy both work on every version."""
    import dataclasses

    from transformers import TrainingArguments

    recipe = load_recipe({**recipe_dict, "train": {**recipe_dict["train"], "evaluation_strategy": "no"}})
    effective, notes = get_backend("cpu").resolve(recipe)
    if "evaluation_strategy" in {f.name for f in dataclasses.fields(TrainingArguments)}:
        assert "evaluation_strategy" in effective.train  # this transformers still has the old name
    else:
        assert "evaluation_strategy" not in effective.train and str(effective.train["eval_strategy"]).endswith("no")
        assert "train.evaluation_strategy -> train.eval_strategy (its name in this transformers)" in notes


def test_an_accelerators_loader_reads_the_weights_onto_this_processs_device(monkeypatch):
    """Weights go straight to the process's device (no host copy for the Trainer to move),
    except on the CPU, under `device: cpu`, with quantization (bitsandbytes places its own) and
    under FSDP/DeepSpeed (they place and split the weights)."""
    from portaft.backends.base import TransformersBackend
    from portaft.backends.device import Device
    from portaft.recipe import Recipe

    class Accelerator(TransformersBackend):
        name, device_type, priority, distributed_backend = "accelerator", "npu", 1, "hccl"

        def unavailable_reason(self):
            return None

        def device(self):
            return Device("npu", bf16=True, fp16=True, fused_optimizer=None, collectives="hccl")

    def recipe(**changes):
        return Recipe.model_validate({"model": {"name_or_path": "m"}, "data": [{"path": "d"}],
                                      "train": {"output_dir": "/tmp/unused", **changes.pop("train", {})}, **changes})

    import portaft.backends.base as base

    backend = Accelerator()
    monkeypatch.setenv("LOCAL_RANK", "1")
    # a device torch does not see (a plugin's device faked available): the Trainer trains on the CPU, load there
    assert backend._straight_to_device(recipe()) == {}
    monkeypatch.setattr(base, "_torch_has_accelerator", lambda device_type: device_type == "npu")
    assert backend._straight_to_device(recipe()) == {"device_map": {"": "npu:1"}}
    assert backend._straight_to_device(recipe(device="cpu")) == {}
    assert backend._straight_to_device(recipe(train={"deepspeed": "zero2"})) == {}
    assert backend._straight_to_device(recipe(train={"fsdp": "full_shard"})) == {}
    assert get_backend("cpu")._straight_to_device(recipe()) == {}
