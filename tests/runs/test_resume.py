"""Checkpoints are complete or ignored; resume continues the same run exactly, or refuses."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from safetensors.torch import load_file

import portaft
from portaft.runner.checkpoints import MARKER
from portaft.cli import main

def _recipe(recipe_dict, tmp_path, name):
    # dropout on, so resuming must also restore the RNG to be exact
    return {**recipe_dict, "lora": {**recipe_dict["lora"], "dropout": 0.1},
            "train": {**recipe_dict["train"], "output_dir": str(tmp_path / name), "max_steps": 6, "save_steps": 2}}


def _adapter(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


KILLER = textwrap.dedent("""
    import os, signal, sys
    from transformers import Trainer

    kill_at = int(sys.argv[2])
    save_rng_state = Trainer._save_rng_state

    def killed_while_saving(self, output_dir):
        # kill -9 half-way through writing a checkpoint: weights and optimizer are on
        # disk, the RNG state and trainer_state.json are not
        if self.state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return save_rng_state(self, output_dir)

    Trainer._save_rng_state = killed_while_saving
    from portaft.cli import main
    sys.exit(main(["run", sys.argv[1], "--backend", "cpu"]))
""")


def test_a_run_killed_while_saving_resumes_to_the_same_adapter_bit_for_bit(recipe_dict, tmp_path, write_recipe):
    whole = portaft.run(_recipe(recipe_dict, tmp_path, "whole"), backend="cpu", echo=lambda _: None)

    interrupted = _recipe(recipe_dict, tmp_path, "interrupted")
    path = write_recipe(interrupted, "interrupted.yaml")
    (tmp_path / "killer.py").write_text(KILLER)
    killed = subprocess.run([sys.executable, str(tmp_path / "killer.py"), str(path), "4"], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    out = tmp_path / "interrupted"
    assert (out / "checkpoint-2" / MARKER).is_file()
    assert (out / "checkpoint-4").is_dir() and not (out / "checkpoint-4" / MARKER).exists()
    assert not (out / "portaft_run.json").exists()

    lines = []
    resumed = portaft.run(path, backend="cpu", echo=lines.append)
    text = "\n".join(lines)
    assert f"{out / 'checkpoint-4'} is incomplete" in text
    assert f"resuming from {out / 'checkpoint-2'} (step 2)" in text
    expected, got = _adapter(whole.output_dir), _adapter(resumed.output_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    losses = [e["loss"] for e in resumed.log_history if "loss" in e]
    assert losses == [e["loss"] for e in whole.log_history if "loss" in e]  # steps 1-2 come from checkpoint-2's state
    record = json.loads((out / "portaft_run.json").read_text())
    assert record["resumed_from"] == str(out / "checkpoint-2")


def test_a_finished_run_run_again_does_nothing(recipe_dict, tmp_path):
    recipe = _recipe(recipe_dict, tmp_path, "done")
    first = portaft.run(recipe, backend="cpu", echo=lambda _: None)
    stamp = (first.output_dir / "adapter_model.safetensors").stat().st_mtime_ns
    lines = []
    again = portaft.run({**recipe, "eval_prompts": ["你是谁？"]}, backend="cpu", echo=lines.append)  # not a training change
    assert any("already holds this run, finished at step 6: nothing to do" in line for line in lines)
    assert (first.output_dir / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert again.log_history == first.log_history


def test_resuming_with_a_different_recipe_is_refused_with_the_differences(recipe_dict, tmp_path, write_recipe, capsys):
    recipe = _recipe(recipe_dict, tmp_path, "changed")
    recipe["train"]["max_steps"] = 2
    portaft.run(recipe, backend="cpu", echo=lambda _: None)
    (tmp_path / "changed" / "portaft_run.json").unlink()  # as if it had been stopped after checkpoint-2
    changed = {**recipe, "lora": {**recipe["lora"], "r": 8}, "train": {**recipe["train"], "learning_rate": 1e-3}}
    code = main(["run", str(write_recipe(changed)), "--backend", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "checkpoint-2 was trained with a different recipe" in err
    assert "lora.r: 4 -> 8" in err and "train.learning_rate: 0.005 -> 0.001" in err
    assert "train.max_steps" not in err and "Traceback" not in err


def test_changed_data_is_a_difference_too(recipe_dict, tmp_path, conversation_file):
    recipe = _recipe(recipe_dict, tmp_path, "data")
    recipe["train"]["max_steps"] = 2
    portaft.run(recipe, backend="cpu", echo=lambda _: None)
    (tmp_path / "data" / "portaft_run.json").unlink()
    conversation_file.write_text(conversation_file.read_text(encoding="utf-8").replace("黄大力", "李小明"), encoding="utf-8")
    with pytest.raises(portaft.UserError, match=r"data\[0\] contents"):
        portaft.run(recipe, backend="cpu", echo=lambda _: None)


def test_resume_false_refuses_a_non_empty_output_dir_unless_overwrite(recipe_dict, tmp_path):
    recipe = _recipe(recipe_dict, tmp_path, "fresh")
    recipe["train"]["max_steps"] = 2
    portaft.run(recipe, backend="cpu", echo=lambda _: None)
    with pytest.raises(portaft.UserError, match="is not empty and resume is false. Set overwrite: true"):
        portaft.run({**recipe, "resume": False}, backend="cpu", echo=lambda _: None)
    lines = []
    result = portaft.run({**recipe, "resume": False, "overwrite": True}, backend="cpu", echo=lines.append)
    assert any("removing 1 checkpoint folder(s)" in line for line in lines)
    assert [e["step"] for e in result.log_history if "loss" in e] == [1, 2]  # trained again from step 0


def test_resume_true_without_a_checkpoint_is_refused(recipe_dict, tmp_path):
    with pytest.raises(portaft.UserError, match="holds no complete checkpoint"):
        portaft.run({**_recipe(recipe_dict, tmp_path, "none"), "resume": True}, backend="cpu", echo=lambda _: None)


def test_save_total_limit_keeps_the_newest_complete_checkpoints(recipe_dict, tmp_path):
    recipe = _recipe(recipe_dict, tmp_path, "rotated")
    recipe["train"]["save_total_limit"] = 2
    result = portaft.run(recipe, backend="cpu", echo=lambda _: None)
    kept = sorted(p.name for p in result.output_dir.glob("checkpoint-*"))
    assert kept == ["checkpoint-4", "checkpoint-6"]
    assert all((result.output_dir / k / MARKER).is_file() for k in kept)
    # the effective recipe still says what the user wrote
    assert yaml.safe_load((result.output_dir / "portaft_recipe.yaml").read_text())["train"]["save_total_limit"] == 2


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(recipe_dict, tmp_path, write_recipe, capsys):
    recipe = _recipe(recipe_dict, tmp_path, "nan")
    recipe["train"]["save_steps"] = 1
    # an absurd learning rate: the first update makes the weights overflow
    recipe["train"]["learning_rate"] = 1e30
    recipe["train"]["max_grad_norm"] = 0.0
    code = main(["run", str(write_recipe(recipe)), "--backend", "cpu"])
    err = capsys.readouterr().err
    assert code == 4
    out = tmp_path / "nan"
    steps = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert "training stopped" in err and "Traceback" not in err
    bad = int(err.split(" at step ")[1].split(";")[0])
    assert steps == list(range(1, bad)), (steps, bad)
    assert f"The last good checkpoint is {out / f'checkpoint-{bad - 1}'}" in err
    good = load_file(str(out / f"checkpoint-{bad - 1}" / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in good.values())
    assert not (out / "adapter_model.safetensors").exists() and not (out / "portaft_run.json").exists()


def test_a_nan_loss_between_saves_is_reported_at_its_own_step_and_nothing_after_it_is_saved(
        recipe_dict, tmp_path, write_recipe, capsys):
    """The loss is read when a step logs or saves, not every step (a read waits for the GPU):
    the NaN of step 2 is found at step 3's save, which is not written, and named as step 2."""
    recipe = _recipe(recipe_dict, tmp_path, "nan-late")
    recipe["train"].update(save_steps=3, logging_steps=100, learning_rate=1e30, max_grad_norm=0.0)
    code = main(["run", str(write_recipe(recipe)), "--backend", "cpu"])
    err = capsys.readouterr().err
    assert code == 4 and "Traceback" not in err
    assert "at step 2;" in err and "training stopped" in err
    assert not list((tmp_path / "nan-late").glob("checkpoint-*"))


