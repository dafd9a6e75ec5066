"""Plugin loading that holds: a plugin that fails in any way is named with its error by
`portaft plugins` and `portaft backends`, and nothing else is affected."""

import json

import pytest

import portaft
from helpers import LazyCpu, plugin, use_plugins
from portaft.backends import TransformersBackend
from portaft.cli import main


class Looping:
    """A delegation gone wrong: every member read asks for itself again."""

    name, priority = "looping", 1

    def __getattr__(self, member):
        return getattr(self, member)


class RaisingProperty(TransformersBackend):
    name, device_type, priority = "raising-property", "cpu", 2

    def unavailable_reason(self):
        return None

    @property
    def distributed_backend(self):
        raise RuntimeError("no collectives configured")


class BrokenCheck(TransformersBackend):
    name, device_type, priority, distributed_backend = "broken-check", "cpu", 999, "gloo"

    def unavailable_reason(self):
        raise OSError("the driver library is missing")


@pytest.fixture
def installed(monkeypatch):
    return lambda **plugins: use_plugins(monkeypatch, **plugins)


def _backends(register):
    for backend in (LazyCpu(), Looping(), RaisingProperty(), BrokenCheck()):
        register(backend)


def _raising(register):
    register(LazyCpu())  # registered before the failure
    raise ValueError("this plugin's hook is broken")


def test_backends_whose_members_raise_or_loop_are_refused_by_name_and_the_rest_work(installed, recipe_dict, capsys):
    plugins = installed(odd=plugin(register_backends=_backends))
    assert list(plugins.backends) == ["broken-check", "npu", "cuda", "cpu", "lazy-cpu"]
    assert plugins.problems == [
        "backend 'looping' from test_plugins (plugin 'odd') was refused: reading its `device_type` raised "
        "RecursionError: maximum recursion depth exceeded",
        "backend 'raising-property' from test_plugins (plugin 'odd') was refused: reading its `distributed_backend` "
        "raised RuntimeError: no collectives configured"]
    # a broken is_available() is a reason, never a crash; `auto` takes the next available backend
    assert plugins.unavailable_reason(plugins.get_backend("broken-check")) == (
        "its availability check raised OSError: the driver library is missing")
    assert plugins.choose_backend(portaft.load_recipe(recipe_dict)).name == "cpu"

    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "broken-check" in out and "unavailable: its availability check raised OSError" in out
    assert "lazy-cpu" in out and "warning: backend 'looping'" in out and "warning: backend 'raising-property'" in out
    main(["doctor", "--json"])
    checks = {check["name"]: check for check in json.loads(capsys.readouterr().out)["backends"]}
    assert checks["broken-check"]["reason"] == "its availability check raised OSError: the driver library is missing"
    assert checks["lazy-cpu"]["smoke_test"] == "ok"


def test_a_plugin_whose_hook_raises_is_broken_with_the_error_and_the_others_still_load(installed, capsys):
    installed(raising=plugin(register_backends=_raising), fine=plugin(
        register_templates=lambda register: register("fine", "{{ messages }}")))
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "raising" in out and "BROKEN: its register_backends hook raised ValueError: this plugin's hook is broken" in out
    assert main(["plugins", "--json"]) == 0
    infos = {i["name"]: i for i in json.loads(capsys.readouterr().out)}
    assert infos["raising"]["error"].startswith("its register_backends hook raised ValueError")
    assert infos["fine"]["error"] is None and infos["cpu"]["error"] is None
    assert main(["backends", "--json"]) == 0
    captured = capsys.readouterr()
    assert {row["name"] for row in json.loads(captured.out)} >= {"cpu", "cuda", "npu"}
    assert "warning: plugin 'raising' ((in process)) is broken: its register_backends hook raised" in captured.err
    assert "fine" in portaft.plugins.get_plugins().templates




def test_portaft_imported_without_being_installed_says_to_install_it(monkeypatch, capsys):
    """Its own plugins arrive through the installed package's entry points: a source folder on
    PYTHONPATH has none, and every command would know no backend ("Known: auto, .")."""
    monkeypatch.setattr("portaft.plugins.loading.entry_points", lambda: [])
    assert main(["backends"]) == 2
    err = capsys.readouterr().err
    assert "portaft's own backends, templates and formats were not found" in err and "pip install -e ." in err
