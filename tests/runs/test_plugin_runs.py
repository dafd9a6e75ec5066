"""Plugins that reuse a built-in backend, or add a speed-up, train with it."""

import types

import portaft
from helpers import LazyCpu, plugin, use_plugins
from portaft.speed_ups import MODEL


def test_a_backend_that_delegates_lazily_to_the_cpu_backend_trains(monkeypatch, recipe_dict):
    use_plugins(monkeypatch, lazy=plugin(register_backends=lambda register: register(LazyCpu())))
    recipe_dict["train"]["max_steps"] = 1
    result = portaft.run(recipe_dict, backend="lazy-cpu", echo=lambda _: None)
    assert result.backend == "lazy-cpu" and (result.output_dir / "adapter_model.safetensors").is_file()


def test_a_speed_up_offered_by_a_plugin_is_tried_and_noted(monkeypatch, recipe_dict):
    """register_speed_ups: offered for the run's backend, after the backend's own."""
    seen = []
    speed_up = types.SimpleNamespace(NAME="counted", STAGE=MODEL, applies=lambda training: None,
                                     apply=lambda training: seen.append(training.model) or "counted the model")
    use_plugins(monkeypatch, extra=plugin(register_speed_ups=lambda register, backend: backend.name == "cpu"
                                          and register(speed_up)))
    recipe_dict["train"]["max_steps"] = 1
    result = portaft.run(recipe_dict, backend="cpu", echo=lambda _: None)
    assert "speed-up counted: counted the model" in result.notes and len(seen) == 1
