"""Experiment tracking: `train.report_to` is explicit and checked before any model loads,
plugins add Trainer callbacks (register_callbacks), and the portaft-swanlab plugin logs offline."""

import types
from pathlib import Path

import pytest
from transformers import TrainingArguments
from transformers.integrations import integration_utils
from transformers.trainer_callback import TrainerCallback

from helpers import use_plugins
from portaft import UserError, hookimpl
from portaft.plugins import get_plugins
from portaft import load_recipe
from portaft.runner.tracking import explicit_report_to, prepare, report_to_names

REPO = Path(__file__).resolve().parents[2]


class Recorder(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def recorder_plugin(recorder, name="recorder"):
    """Serves `report_to: <name>` with `recorder`, and registers nothing otherwise."""

    @hookimpl
    def register_callbacks(register, recipe):
        if name in report_to_names(recipe.train):
            register(recorder, report_to=name, note=f"{name}: recording")

    return types.SimpleNamespace(register_callbacks=register_callbacks)


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
    tracked = prepare(load_recipe(recipe_dict, ["train.report_to=recorder"]), get_plugins())
    assert tracked.callbacks == [first]
    assert tracked.report_to == "none"  # transformers is not given the plugin's name
    assert any("'second'" in note and "refused" in note and "'first'" in note for note in tracked.notes)


def test_an_unknown_tracker_lists_the_known_ones(recipe_dict):
    with pytest.raises(UserError) as caught:
        prepare(load_recipe(recipe_dict, ["train.report_to=tensorbord"]), get_plugins())
    message = str(caught.value)
    assert message.startswith("train.report_to: 'tensorbord' is not a tracker")
    assert "Did you mean `tensorboard`?" in message
    for name in integration_utils.INTEGRATION_TO_CALLBACK:
        assert name in message


def test_none_and_all_stand_alone(recipe_dict):
    with pytest.raises(UserError, match="stand alone"):
        prepare(load_recipe(recipe_dict, ["train.report_to=[none, tensorboard]"]), get_plugins())


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


