"""Experiment tracking: `train.report_to` is explicit and checked before any model loads,
plugins add Trainer callbacks (register_callbacks), and the portaft-swanlab plugin logs offline."""

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from transformers import TrainingArguments
from transformers.integrations import integration_utils
from transformers.trainer_callback import TrainerCallback

import portaft
from portaft import UserError, hookimpl
from portaft.plugins import Plugins
from portaft.recipe import load_recipe
from portaft.tracking import explicit_report_to, prepare, report_to_names

REPO = Path(__file__).resolve().parents[1]


class Recorder(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def use_plugins(monkeypatch, **plugins):
    registry = Plugins()
    for name, plugin in plugins.items():
        registry.register(plugin, name=name)
    monkeypatch.setattr("portaft.plugins._current", registry)
    return registry


def recorder_plugin(recorder, name="recorder"):
    """Serves `report_to: <name>` with `recorder`, and registers nothing otherwise."""

    @hookimpl
    def register_callbacks(register, recipe):
        if name in report_to_names(recipe.train):
            register(recorder, report_to=name, note=f"{name}: recording")

    return types.SimpleNamespace(register_callbacks=register_callbacks)


def loads_nothing(monkeypatch):
    """Make loading a tokenizer or model through the cpu backend fail the test."""
    cpu = portaft.get_backend("cpu")

    def refuse(recipe):
        raise AssertionError("a model or tokenizer was loaded before train.report_to was checked")

    monkeypatch.setattr(cpu, "load_tokenizer", refuse)
    monkeypatch.setattr(cpu, "load_model", refuse)


def test_the_callback_plugin_in_the_docs_logs_a_real_run(monkeypatch, recipe_dict):
    page = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    [code] = [b for b in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "def register_callbacks" in b]
    module = types.ModuleType("jsonl_plugin")
    exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)
    use_plugins(monkeypatch, jsonl=module)
    recipe_dict["train"].update(max_steps=2, report_to=["jsonl"])  # a name transformers itself would reject
    lines = []
    result = portaft.run(recipe_dict, backend="cpu", echo=lines.append)

    logged = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    assert len(losses) == 2
    assert [entry["loss"] for entry in logged if "loss" in entry] == losses
    assert f"portaft: jsonl: every log line goes to {result.output_dir / 'metrics.jsonl'}" in lines
    saved = yaml.safe_load((result.output_dir / "portaft_recipe.yaml").read_text(encoding="utf-8"))
    assert saved["train"]["report_to"] == ["jsonl"]  # the recipe as written, rerunnable


def test_plugins_register_only_when_the_recipe_asks(monkeypatch, recipe_dict):
    always = Recorder()

    @hookimpl
    def register_callbacks(register):  # an implementation may take fewer arguments than the hook
        register(always)

    registry = use_plugins(monkeypatch, recorder=recorder_plugin(Recorder()),
                           always=types.SimpleNamespace(register_callbacks=register_callbacks))
    asked = load_recipe(recipe_dict, ["train.report_to=recorder"])
    assert [(c.plugin, c.report_to) for c in registry.callbacks(asked)] == [("recorder", "recorder"), ("always", None)]
    not_asked = load_recipe(recipe_dict)
    assert [c.callback for c in registry.callbacks(not_asked)] == [always]


def test_a_second_plugin_serving_the_same_name_is_refused(monkeypatch, recipe_dict):
    first, second = Recorder(), Recorder()
    use_plugins(monkeypatch, first=recorder_plugin(first), second=recorder_plugin(second))
    tracked = prepare(load_recipe(recipe_dict, ["train.report_to=recorder"]))
    assert tracked.callbacks == [first]
    assert tracked.report_to == "none"  # transformers is not given the plugin's name
    assert any("'second'" in note and "refused" in note and "'first'" in note for note in tracked.notes)


def test_a_tracker_that_is_not_installed_stops_the_run_before_any_model_loads(monkeypatch, recipe_dict):
    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: False)
    loads_nothing(monkeypatch)
    recipe_dict["train"]["report_to"] = ["tensorboard"]
    with pytest.raises(UserError) as caught:
        portaft.run(recipe_dict, backend="cpu", echo=lambda line: None)
    assert str(caught.value) == "train.report_to: tensorboard is not installed. pip install tensorboard (or portaft[track])"


def test_an_unknown_tracker_lists_the_known_ones(recipe_dict):
    with pytest.raises(UserError) as caught:
        prepare(load_recipe(recipe_dict, ["train.report_to=tensorbord"]))
    message = str(caught.value)
    assert message.startswith("train.report_to: 'tensorbord' is not a tracker")
    assert "Did you mean `tensorboard`?" in message
    for name in integration_utils.INTEGRATION_TO_CALLBACK:
        assert name in message


def test_none_and_all_stand_alone(recipe_dict):
    with pytest.raises(UserError, match="stand alone"):
        prepare(load_recipe(recipe_dict, ["train.report_to=[none, tensorboard]"]))


def test_unset_report_to_means_none_on_every_transformers(monkeypatch, tmp_path):
    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: True)  # a tracker is installed
    train = {"output_dir": str(tmp_path), "use_cpu": True}
    notes = explicit_report_to(train)
    assert train["report_to"] == "none"
    assert TrainingArguments(**train).report_to == []
    would_have = TrainingArguments(output_dir=str(tmp_path), use_cpu=True).report_to  # transformers alone
    assert bool(notes) == bool(would_have)  # a note exactly when portaft changes something
    if notes:
        assert notes[0].startswith("train.report_to: unset -> none") and "tensorboard" in notes[0]


def test_all_becomes_the_trackers_installed_here(monkeypatch):
    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: True)
    train = {"report_to": "all"}
    [note] = explicit_report_to(train)
    assert "tensorboard" in train["report_to"]
    assert train["report_to"] == integration_utils.get_available_reporting_integrations()
    assert note.startswith("train.report_to: all -> ")


# --- the portaft-swanlab plugin (plugins/portaft-swanlab) ------------------------------

@pytest.fixture(scope="module")
def swanlab_plugin(tmp_path_factory):
    pytest.importorskip("swanlab")
    target = tmp_path_factory.mktemp("swanlab-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                    "--target", str(target), str(REPO / "plugins" / "portaft-swanlab")], check=True, timeout=600)
    return target


@pytest.fixture
def no_swanlab_login(monkeypatch, tmp_path):
    """No SwanLab login or settings of the machine's user: a fresh home, folder and environment."""
    for name in [n for n in os.environ if n.startswith("SWANLAB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "swanlab-home"))
    monkeypatch.chdir(tmp_path)


def test_swanlab_plugin_is_found_through_its_entry_point(swanlab_plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(swanlab_plugin))
    [info] = [i for i in Plugins().info if i.distribution == "portaft-swanlab"]
    assert info.error is None and info.hooks == ["register_callbacks"]


def test_swanlab_logs_a_real_run_offline_into_the_output_folder(swanlab_plugin, no_swanlab_login, monkeypatch,
                                                                 recipe_dict):
    import swanlab

    monkeypatch.syspath_prepend(str(swanlab_plugin))
    monkeypatch.setattr("portaft.plugins._current", Plugins())
    started, logged = [], []
    real_init, real_log = swanlab.init, swanlab.log
    monkeypatch.setattr(swanlab, "init", lambda **kw: started.append(kw) or real_init(**kw))
    monkeypatch.setattr(swanlab, "log", lambda data, step=None, **kw: logged.append(data) or real_log(data, step=step, **kw))
    recipe_dict["train"].update(max_steps=2, report_to="swanlab")
    result = portaft.run(recipe_dict, backend="cpu", echo=lambda line: None)

    out = result.output_dir
    [init] = started
    assert init["mode"] == "offline" and init["project"] == out.name and Path(init["log_dir"]) == out / "swanlog"
    assert any(n.startswith("swanlab: offline") and str(out / "swanlog") in n for n in result.notes)
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    assert [data["train/loss"] for data in logged if "train/loss" in data] == losses
    [run_folder] = (out / "swanlog").glob("run-*")
    assert list(run_folder.glob("*.swanlab")) and not swanlab.has_run()  # written, and finished with training


def test_swanlab_without_its_plugin_is_refused_before_any_model_loads(no_swanlab_login, monkeypatch, recipe_dict):
    pytest.importorskip("swanlab")
    monkeypatch.setenv("PORTAFT_LOAD_PLUGINS", "")  # portaft's own plugins only, even where portaft-swanlab is installed
    loads_nothing(monkeypatch)
    recipe_dict["train"]["report_to"] = "swanlab"
    with pytest.raises(UserError) as caught:
        portaft.run(recipe_dict, backend="cpu", echo=lambda line: None)
    assert "pip install ./plugins/portaft-swanlab" in str(caught.value)
