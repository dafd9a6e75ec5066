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
from transformers.integrations import integration_utils

from helpers import loads_nothing, use_plugins
import portaft
from portaft import UserError
from portaft.plugins import Plugins

REPO = Path(__file__).resolve().parents[2]


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


def test_a_tracker_that_is_not_installed_stops_the_run_before_any_model_loads(monkeypatch, recipe_dict):
    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: False)
    loads_nothing(monkeypatch)
    recipe_dict["train"]["report_to"] = ["tensorboard"]
    with pytest.raises(UserError) as caught:
        portaft.run(recipe_dict, backend="cpu", echo=lambda line: None)
    assert str(caught.value) == "train.report_to: tensorboard is not installed. pip install tensorboard (or portaft[track])"


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
    use_plugins(monkeypatch)  # entry points read again, the plugin's among them
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
