"""The command line: exit codes and messages a user sees."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from portaft.cli import main
from helpers import cli as portaft

REPO = Path(__file__).resolve().parents[2]


def test_validate_accepts_a_good_recipe(write_recipe, recipe_dict):
    done = portaft("validate", write_recipe(recipe_dict))
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout


def test_validate_lists_every_problem_and_exits_2_without_traceback(write_recipe, recipe_dict):
    recipe_dict["lora"]["r"] = 0
    recipe_dict["train"]["learnin_rate"] = 1
    path = write_recipe(recipe_dict)
    done = portaft("validate", path)
    assert done.returncode == 2
    assert "2 problems" in done.stderr and "lora.r" in done.stderr and "train.learnin_rate" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_finds_a_missing_model_folder_without_loading_it(write_recipe, recipe_dict):
    recipe_dict["model"]["name_or_path"] = "/nonexistent/model"
    done = portaft("validate", write_recipe(recipe_dict))
    assert done.returncode == 2, done.stderr
    assert "model.name_or_path: '/nonexistent/model': no such folder" in done.stderr


def test_run_on_an_unavailable_backend_exits_2(write_recipe, recipe_dict):
    done = portaft("run", write_recipe(recipe_dict), "--backend", "npu")
    assert done.returncode == 2
    assert "backend 'npu' is not available: torch_npu is not installed" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_with_an_unknown_backend_exits_2(write_recipe, recipe_dict):
    done = portaft("run", write_recipe(recipe_dict), "--backend", "tpu")
    assert done.returncode == 2 and "unknown backend 'tpu'" in done.stderr


def test_run_with_a_missing_model_folder_exits_2(write_recipe, recipe_dict, tmp_path):
    done = portaft("run", write_recipe(recipe_dict), f"model.name_or_path={tmp_path / 'no-model'}", "--backend", "cpu",
                   env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2, done.stderr
    assert "model.name_or_path: " in done.stderr and "no such folder" in done.stderr  # found before loading
    assert "Traceback" not in done.stderr


def test_missing_recipe_file_exits_2():
    done = portaft("run", "nowhere.yaml")
    assert done.returncode == 2 and "recipe file not found" in done.stderr


def test_backends_json_lists_availability_reason_priority_and_distribution():
    done = portaft("backends", "--json")
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["cpu"]["available"] is True and rows["cpu"]["reason"] is None
    assert rows["npu"]["available"] is False and "torch_npu is not installed" in rows["npu"]["reason"]
    assert rows["cuda"]["distribution"] == "portaft" and rows["cuda"]["priority"] == 50


def test_plugins_json_lists_hooks():
    done = portaft("plugins", "--json")
    infos = {i["name"]: i for i in json.loads(done.stdout)}
    assert infos["templates"]["hooks"] == ["register_templates"]
    assert infos["cpu"]["distribution"] == "portaft" and infos["cpu"]["error"] is None


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "examples").glob("*.yaml")))
def test_every_example_recipe_and_its_data_validate(recipe, monkeypatch, capsys, tiny_model):
    monkeypatch.chdir(REPO)
    # examples/models/tiny-deepseek is built by the README's command 1, which a fresh clone has not run
    assert main(["validate", f"examples/{recipe}", f"model.name_or_path={tiny_model}"]) == 0
    assert "valid." in capsys.readouterr().out


def test_preview_marks_the_trained_text_and_counts_tokens(write_recipe, recipe_dict, capsys):
    assert main(["preview", str(write_recipe(recipe_dict)), "-n", "2", "train_on=last_assistant"]) == 0
    out = capsys.readouterr().out
    assert "template: deepseek   train_on: last_assistant" in out
    assert "(xtuner): 8 samples" in out
    first, second = out.split("--- sample 1 of 8: ")[1].split("--- sample 2 of 8: ")
    assert "User: 你是谁？\n\nAssistant:⟦ 我是黄大力的智能助手。<｜end▁of▁sentence｜>⟧" in first
    assert "Assistant: Huang Dali made me.<｜end▁of▁sentence｜>" in second  # an earlier reply: not trained
    assert "Assistant:⟦ Answer questions.<｜end▁of▁sentence｜>⟧" in second
    assert "--- sample 3" not in out


def test_version_and_the_data_module_come_with_a_plain_import():
    done = portaft("--version")
    assert done.returncode == 0 and done.stdout.strip() == "portaft 0.1.0"
    code = "import portaft; print(portaft.data.load.__module__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "portaft.data", done.stderr


def test_the_command_exits_with_mains_code_and_still_runs_exit_hooks(tmp_path):
    # entry() freezes the objects left before exiting (a faster shutdown); the exit code, the
    # message and atexit hooks (where trackers such as wandb finish their upload) must survive it
    script = ("import atexit, sys\nfrom portaft.cli import entry\n"
              "atexit.register(lambda: print('exit hook ran', flush=True))\n"
              f"sys.argv = ['portaft', 'run', {str(tmp_path / 'missing.yaml')!r}]\nentry()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "recipe file not found" in done.stderr and "Traceback" not in done.stderr
    assert "exit hook ran" in done.stdout
