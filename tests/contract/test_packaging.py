"""portaft.backends ships inside the wheel, and a plugin package installed from plugins/ works."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import use_plugins
import portaft

REPO = Path(__file__).resolve().parents[2]


def pip_target(source, target):
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                    "--target", str(target), str(source)], check=True, timeout=600)


def python_with(path, code, cwd):
    env = {**os.environ, "PYTHONPATH": str(path)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_wheel_ships_the_builtin_backends(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                    str(REPO)], check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("portaft-*.whl"))
    pip_target(wheel, tmp_path / "site")
    done = python_with(tmp_path / "site", (
        "import json, portaft.backends.cpu as cpu, portaft.backends.npu, portaft.backends.cuda;"
        "from portaft.plugins import get_plugins;"
        "print(json.dumps([cpu.__file__, list(get_plugins().backends)]))"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    location, names = json.loads(done.stdout)
    assert location.startswith(str(tmp_path / "site" / "portaft" / "backends"))
    assert set(names) == {"cpu", "cuda", "npu"}


@pytest.fixture(scope="module")
def mps_plugin(tmp_path_factory):
    target = tmp_path_factory.mktemp("mps-site")
    pip_target(REPO / "plugins" / "portaft-mps", target)
    return target


def test_installed_plugin_is_listed_with_its_distribution_and_reason(mps_plugin, tmp_path):
    done = python_with(mps_plugin, "from portaft.cli import main; main(['backends', '--json'])", cwd=tmp_path)
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["mps"]["distribution"] == "portaft-mps"
    assert rows["mps"]["available"] is False and "mps" in rows["mps"]["reason"]
    assert list(rows) == ["npu", "cuda", "mps", "cpu"]  # priority order


def test_plugin_backend_trains_through_portaft(mps_plugin, monkeypatch, recipe_dict):
    """With its device faked available, the plugin's own loaders and trainer run a recipe."""
    monkeypatch.syspath_prepend(str(mps_plugin))
    plugins = use_plugins(monkeypatch)
    mps = plugins.get_backend("mps")
    monkeypatch.setattr(type(mps), "unavailable_reason", lambda self: None)
    recipe_dict["train"]["max_steps"] = 2
    result = portaft.run(recipe_dict, backend="mps", echo=lambda line: None)
    assert result.backend == "mps"
    assert "model.dtype: auto -> float32 (matches the training precision)" in result.notes  # no bf16 on mps
    assert (result.output_dir / "adapter_model.safetensors").is_file()
