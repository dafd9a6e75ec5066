"""The command line trains."""


import yaml
from helpers import cli as portaft


def test_run_trains_and_accepts_overrides(write_recipe, recipe_dict, tmp_path):
    out = tmp_path / "cli-out"
    done = portaft("run", write_recipe(recipe_dict), "train.max_steps=2", f"train.output_dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    effective = yaml.safe_load((out / "portaft_recipe.yaml").read_text(encoding="utf-8"))
    assert effective["train"]["max_steps"] == 2
    assert (out / "adapter_model.safetensors").is_file()
