"""validate finds what a recipe gets wrong across keys, and where it meets the world, before
any model loads: exit 2, the YAML path and its line (or the override), no traceback."""

import json
import os
import shutil
import time

import pytest
import yaml

import portaft as portaft_api
from portaft.cli import main
from portaft.data.chat_templates import DEEPSEEK
from portaft.errors import UserError
from helpers import cli as portaft
from helpers import loads_no_model


def validate(monkeypatch, capsys, path, *overrides):
    loads_no_model(monkeypatch)  # the tokenizer may load (the chat template is checked with it), never the model
    code = main(["validate", str(path), *overrides])
    return code, capsys.readouterr().err


def line_of(path, text):
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.startswith(text))


def test_evaluation_without_eval_data_is_found_at_its_key(recipe_dict, write_recipe, monkeypatch, capsys):
    recipe_dict["train"]["eval_strategy"] = "steps"
    path = write_recipe(recipe_dict)
    code, err = validate(monkeypatch, capsys, path)
    assert code == 2 and "Traceback" not in err
    assert f"{path}:{line_of(path, '  eval_strategy')}: train.eval_strategy: steps: evaluation needs eval data" in err
    assert "val_size" in err and "eval_data" in err


def test_load_best_model_needs_save_steps_a_multiple_of_eval_steps(recipe_dict, write_recipe, monkeypatch, capsys):
    recipe_dict["train"].update(eval_strategy="steps", eval_steps=3, save_steps=2, load_best_model_at_end=True)
    recipe_dict["val_size"] = 2
    path = write_recipe(recipe_dict)
    code, err = validate(monkeypatch, capsys, path)
    assert code == 2
    assert f"{path}:{line_of(path, '  save_steps')}: train.save_steps: load_best_model_at_end" in err
    assert "Set train.save_steps: 3" in err
    code, err = validate(monkeypatch, capsys, path, "train.save_steps=6")
    assert code == 0, err


def test_packing_with_an_option_it_ignores_is_refused(recipe_dict, write_recipe, monkeypatch, capsys):
    recipe_dict.update(packing=True)
    recipe_dict["train"]["group_by_length"] = True
    code, err = validate(monkeypatch, capsys, write_recipe(recipe_dict))
    assert code == 2 and "train.group_by_length: true does nothing with packing: true" in err
    code, err = validate(monkeypatch, capsys, write_recipe(recipe_dict), "packing=false", "train.group_by_length=false",
                         "packing_tokens=512")
    assert code == 2 and "packing_tokens: set, but packing is off" in err


def test_an_error_about_several_keys_cites_the_key_involved(recipe_dict, write_recipe, monkeypatch, capsys):
    recipe_dict.update(finetune="full", quantization={"bits": 4})
    path = write_recipe(recipe_dict)
    code, err = validate(monkeypatch, capsys, path)
    assert code == 2 and f"{path}:{line_of(path, 'quantization:')}: quantization: quantization is set" in err


def test_a_key_given_only_on_the_command_line_is_blamed_on_the_override(recipe_dict, write_recipe, monkeypatch,
                                                                         capsys):
    recipe_dict.pop("eval_prompts", None)
    path = write_recipe(recipe_dict)
    code, err = validate(monkeypatch, capsys, path, "eval_every=5")
    assert code == 2
    assert "eval_every: eval_every is set but eval_prompts is empty" in err
    assert "(from the override `eval_every=5`)" in err and f"{path}:1" not in err


def test_an_unwritable_output_folder_is_found_before_the_model(recipe_dict, write_recipe, monkeypatch, capsys,
                                                                tmp_path):
    if os.geteuid() == 0:  # permission bits do not stop root: a read-only file system does
        output = "/sys/fs/portaft-test/out"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        output = str(locked / "out")
    recipe_dict["train"]["output_dir"] = output
    code, err = validate(monkeypatch, capsys, write_recipe(recipe_dict))
    assert code == 2 and f"train.output_dir: {output} cannot be written" in err


def test_an_unknown_hub_id_is_refused_at_once_when_the_hub_is_off(recipe_dict, write_recipe, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe_dict["model"]["name_or_path"] = "someone/no-such-model"
    code, err = validate(monkeypatch, capsys, write_recipe(recipe_dict))
    assert code == 2 and "model.name_or_path: 'someone/no-such-model' is not a local folder" in err
    assert "HF_HUB_OFFLINE=1" in err


def test_an_unreachable_hub_is_said_within_seconds(recipe_dict, write_recipe):
    recipe_dict["model"]["name_or_path"] = "someone/no-such-model"
    started = time.monotonic()
    # a closed port: every connection is refused, as on a machine without network
    done = portaft("validate", write_recipe(recipe_dict), env={"HF_ENDPOINT": "http://127.0.0.1:9",
                                                               "HF_HUB_OFFLINE": "0"})
    spent = time.monotonic() - started
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "the hub could not be reached within 5 s" in done.stderr
    check = [line for line in done.stderr.splitlines() if "could not be reached" in line]
    assert check and spent < 120  # the interpreter's start on a busy machine; the check itself is one request


def test_training_arguments_transformers_renamed_are_translated_with_a_note(recipe_dict):
    import dataclasses

    from transformers import TrainingArguments

    import portaft

    recipe_dict["train"].update(warmup_ratio=0.1, no_cuda=True)
    recipe_dict["train"].pop("warmup_steps", None)
    recipe = portaft.load_recipe(recipe_dict)
    effective, notes = portaft.get_backend("cpu").resolve(recipe)
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "warmup_ratio" in fields:  # transformers 4.x
        assert effective.train["warmup_ratio"] == 0.1
    else:  # 5.x: warmup_steps below 1 is the fraction of the run
        assert effective.train["warmup_steps"] == 0.1 and "warmup_ratio" not in effective.train
        assert any(n.startswith("train.warmup_ratio -> train.warmup_steps") for n in notes)
    if "no_cuda" not in fields:
        assert effective.train["use_cpu"] is True and "no_cuda" not in effective.train
    TrainingArguments(**{**effective.train, "output_dir": "unused"})  # what the run will build


def test_training_arguments_transformers_removed_are_dropped_with_a_note(recipe_dict):
    """LLaMA-Factory recipes carry overwrite_output_dir, logging_dir and save_safetensors, which
    transformers 5 removed with no successor: accepted, and where this transformers lacks one,
    dropped with a note saying what happens instead; where it has it, passed on."""
    import dataclasses

    from transformers import TrainingArguments

    import portaft

    recipe_dict["train"].update(overwrite_output_dir=True, logging_dir="logs", save_safetensors=True)
    effective, notes = portaft.get_backend("cpu").resolve(portaft.load_recipe(recipe_dict))
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    for name in ("overwrite_output_dir", "logging_dir", "save_safetensors"):
        if name in fields:
            assert name in effective.train
        else:
            assert name not in effective.train
            assert any(n.startswith(f"train.{name}: dropped (this transformers has no such argument") for n in notes)
    TrainingArguments(**{**effective.train, "output_dir": "unused"})  # what the run will build


def test_warmup_ratio_of_one_or_more_is_refused(recipe_dict):
    import portaft

    recipe_dict["train"]["warmup_ratio"] = 1.5
    with pytest.raises(portaft.RecipeError, match="train.warmup_ratio"):
        portaft.load_recipe(recipe_dict)


ENDLESS = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% endfor %}"  # nothing after a reply
CLOSING = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{{ eos_token }}"  # eos: last turn only


def model_with_template(tiny_model, folder, template):
    """The tiny model, its tokenizer carrying `template` as its own chat_template."""
    from transformers import AutoTokenizer

    shutil.copytree(tiny_model, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("template, data, reason", [
    (ENDLESS, "chat", "writes nothing after an assistant reply (no eos, no end-of-turn token), so the model would "
                      "never learn to stop"),
    (CLOSING, "chat", "the chat template renders earlier turns differently"),
    (ENDLESS, "text", "never learn to stop"),  # run checks the template before reading any data, pretraining text too
])
def test_a_tokenizer_template_run_refuses_is_refused_by_validate_with_runs_message(
        template, data, reason, recipe_dict, write_recipe, tiny_model, tmp_path, monkeypatch, capsys):
    recipe_dict["model"]["name_or_path"] = model_with_template(tiny_model, tmp_path / "model", template)
    recipe_dict["template"] = "tokenizer"
    if data == "text":
        text = tmp_path / "text.jsonl"
        text.write_text(json.dumps({"text": "Plain text to continue pretraining on."}) + "\n", encoding="utf-8")
        recipe_dict["data"] = [{"path": str(text)}]
    path = write_recipe(recipe_dict)
    code, err = validate(monkeypatch, capsys, path)
    with pytest.raises(UserError) as refused:
        portaft_api.run(str(path), backend="cpu", echo=lambda line: None)
    assert code == 2 and "Traceback" not in err
    assert reason in str(refused.value) and f"portaft: error: {refused.value}\n" in err  # run's own message


def test_a_tokenizer_template_run_accepts_validates_without_loading_the_model(recipe_dict, write_recipe, tiny_model,
                                                                              tmp_path, monkeypatch, capsys):
    recipe_dict["model"]["name_or_path"] = model_with_template(tiny_model, tmp_path / "model", DEEPSEEK)
    recipe_dict["template"] = "tokenizer"
    path = write_recipe(recipe_dict)
    loads_no_model(monkeypatch)
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"{path}: valid.") and "template tokenizer" in out
