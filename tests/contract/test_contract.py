"""The backend contract: an outside plugin of 23 lines (tests/contract/plugin/), a subclass of
TransformersBackend installed with pip, trains through every feature a built-in backend
has: eval samples, packing, kill-and-resume, parity, merge, and QLoRA's refusal where
its device cannot run it. Compared with portaft's own cpu backend, bit for bit."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import portaft
from portaft.cli import main
from portaft.plugins import reset_plugins

PLUGIN = Path(__file__).resolve().parent / "plugin"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The plugin installed with pip into a folder of its own."""
    target = tmp_path_factory.mktemp("contract-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                    "--target", str(target), str(PLUGIN)], check=True, timeout=600)
    return target


@pytest.fixture
def installed(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    reset_plugins()  # read the entry points again, the plugin's among them
    return site


def _losses(result) -> list[float]:
    return [entry["loss"] for entry in result.log_history if "loss" in entry]


def _adapter(folder: Path) -> dict:
    return load_file(str(folder / "adapter_model.safetensors"))


def _same_adapter(a: Path, b: Path) -> None:
    expected, got = _adapter(a), _adapter(b)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def _on(recipe_dict: dict, folder: Path, **changes) -> dict:
    return {**recipe_dict, **changes, "train": {**recipe_dict["train"], "output_dir": str(folder)}}


def test_it_is_found_through_its_entry_point_and_listed(installed, capsys):
    assert main(["backends", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["contract-cpu"] == {"name": "contract-cpu", "available": True, "reason": None, "priority": -1,
                                    "device_type": "cpu", "distribution": "portaft-contract-cpu"}


def test_it_trains_packed_with_eval_samples_exactly_as_the_cpu_backend(installed, recipe_dict, tmp_path):
    recipe = {**recipe_dict, "packing": True, "eval_prompts": ["你是谁？"], "eval_every": 2}
    runs = {name: portaft.run(_on(recipe, tmp_path / name), backend=name, echo=lambda _: None)
            for name in ("cpu", "contract-cpu")}
    ours, theirs = runs["cpu"], runs["contract-cpu"]
    assert theirs.backend == "contract-cpu" and len(_losses(theirs)) == 4
    assert _losses(theirs) == _losses(ours)
    _same_adapter(ours.output_dir, theirs.output_dir)
    assert any(note.startswith("packing: ") for note in theirs.notes)
    assert "train.use_cpu: true (training stays on the CPU, never on an accelerator)" in theirs.notes
    assert [s["step"] for s in theirs.samples_during] == [2, 4]
    assert theirs.samples_before and theirs.samples_after == ours.samples_after
    record = json.loads((theirs.output_dir / "portaft_run.json").read_text(encoding="utf-8"))
    assert record["backend"] == "contract-cpu" and record["device"] == "cpu"


KILLER = textwrap.dedent("""
    import os, signal, sys
    from transformers import Trainer

    save_rng_state = Trainer._save_rng_state

    def killed_while_saving(self, output_dir):  # kill -9 half-way through writing checkpoint-4
        if self.state.global_step == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        return save_rng_state(self, output_dir)

    Trainer._save_rng_state = killed_while_saving
    import portaft
    portaft.run(sys.argv[1], backend="contract-cpu", echo=lambda _: None)
""")


def test_a_run_killed_while_saving_resumes_to_the_same_adapter_bit_for_bit(installed, recipe_dict, tmp_path,
                                                                            write_recipe):
    recipe = {**recipe_dict, "lora": {**recipe_dict["lora"], "dropout": 0.1},
              "train": {**recipe_dict["train"], "max_steps": 6, "save_steps": 2}}
    whole = portaft.run(_on(recipe, tmp_path / "whole"), backend="contract-cpu", echo=lambda _: None)
    path = write_recipe(_on(recipe, tmp_path / "killed"), "killed.yaml")
    (tmp_path / "killer.py").write_text(KILLER)
    killed = subprocess.run([sys.executable, str(tmp_path / "killer.py"), str(path)], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    lines = []
    resumed = portaft.run(path, backend="contract-cpu", echo=lines.append)
    assert any(f"resuming from {tmp_path / 'killed' / 'checkpoint-2'}" in line for line in lines)
    assert _losses(resumed) == _losses(whole)
    _same_adapter(whole.output_dir, resumed.output_dir)


def test_parity_with_the_cpu_backend_holds_exactly(installed, recipe_dict, write_recipe, capsys):
    code = main(["parity", str(write_recipe(recipe_dict)), "--backends", "cpu,contract-cpu", "--steps", "3",
                 "--tolerance", "0"])
    out = capsys.readouterr().out
    assert code == 0, out


def test_its_adapter_merges_into_a_plain_model(installed, recipe_dict, tmp_path, capsys):
    run = portaft.run(_on(recipe_dict, tmp_path / "out"), backend="contract-cpu", echo=lambda _: None)
    assert main(["merge", str(run.output_dir), "--to", str(tmp_path / "merged")]) == 0
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # loads without peft


def test_qlora_is_refused_before_anything_loads(installed, recipe_dict, write_recipe, capsys):
    recipe = write_recipe({**recipe_dict, "quantization": {"bits": 4}})
    assert main(["run", str(recipe), "--backend", "contract-cpu"]) == 2
    err = capsys.readouterr().err
    assert ("quantization: 4-bit loading cannot run with the contract-cpu backend: portaft runs bitsandbytes only "
            "on CUDA GPUs") in err and "Traceback" not in err
