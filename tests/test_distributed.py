"""portaft run --nproc N: N processes through torchrun, DDP over gloo on the CPU."""

import json
import os
import subprocess
import sys

import pytest
import yaml


def test_two_processes_on_cpu_train_one_adapter_over_gloo(recipe_dict, write_recipe, tmp_path):
    recipe_dict["train"].update({"max_steps": 3, "save_strategy": "no"})
    recipe = write_recipe(recipe_dict)
    done = subprocess.run([sys.executable, "-m", "portaft", "run", str(recipe), "--nproc", "2", "--backend", "cpu"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "portaft: launching 2 processes on cpu (gloo) with torchrun" in done.stdout
    assert done.stdout.count("portaft: adapter saved in") == 1  # only the first process speaks and writes
    out = tmp_path / "out"
    record = json.loads((out / "portaft_run.json").read_text(encoding="utf-8"))
    assert record["processes"] == 2
    assert "train.ddp_backend: unset -> gloo (2 processes on cpu)" in record["notes"]
    assert [e["step"] for e in record["log_history"] if "loss" in e] == [1, 2, 3]
    effective = yaml.safe_load((out / "portaft_recipe.yaml").read_text(encoding="utf-8"))
    assert effective["train"]["ddp_backend"] == "gloo"
    # LoRA trains every adapter weight in every step: DDP need not search for unused ones
    assert effective["train"]["ddp_find_unused_parameters"] is False
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("nproc", ["0", "-1"])
def test_a_bad_process_count_is_a_user_error(recipe_dict, write_recipe, nproc):
    from portaft.cli import main

    assert main(["run", str(write_recipe(recipe_dict)), "--nproc", nproc]) == 2


def test_one_process_seeing_several_gpus_trains_on_one_and_says_how_to_use_all():
    """transformers would wrap the model in nn.DataParallel, which cannot split a flattened batch."""
    import types

    from portaft.runner import _one_device_per_process

    args = types.SimpleNamespace(n_gpu=2, device="cuda:0")
    (note,) = _one_device_per_process(args, world_size=1)
    assert args._n_gpu == 1 and "portaft run --nproc 2" in note and "cuda:0" in note
    for n_gpu, world_size in ((1, 1), (0, 1), (1, 2)):
        assert _one_device_per_process(types.SimpleNamespace(n_gpu=n_gpu, device="cuda:0"), world_size) == []
