"""Recipe validation: every problem at once, each with its YAML path and line."""

import textwrap

import pytest

from portaft import RecipeError, UserError, load_recipe


def test_valid_recipe_loads_with_defaults(recipe_dict):
    recipe = load_recipe(recipe_dict)
    assert recipe.lora.target_modules == "all-linear"
    assert recipe.model.trust_remote_code is False
    assert recipe.train["learning_rate"] == 5e-3


def test_all_problems_reported_at_once_with_lines(write_recipe, conversation_file):
    path = write_recipe(textwrap.dedent(f"""\
        model:
          name_or_path: m
          dtpye: float32
        data:
          - path: {conversation_file}
        lora:
          r: -1
          dropout: 2
        train:
          output_dir: out
          learnin_rate: 1e-4
          num_train_epochs: many
        """))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    problems = info.value.problems
    assert len(problems) == 5, problems
    text = str(info.value)
    assert f"{path}:3: model.dtpye: unknown key. Did you mean `dtype`?" in text
    assert f"{path}:7: lora.r:" in text and "greater than 0" in text
    assert f"{path}:8: lora.dropout:" in text
    assert f"{path}:11: train.learnin_rate: unknown key. Did you mean `learning_rate`?" in text
    assert f"{path}:12: train.num_train_epochs:" in text and "'many'" in text


def test_missing_sections_are_named(write_recipe):
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe("model:\n  name_or_path: m\n"))
    text = str(info.value)
    assert "data: required, but missing" in text
    assert "train: required, but missing" in text


def test_output_dir_is_required(recipe_dict):
    del recipe_dict["train"]["output_dir"]
    with pytest.raises(RecipeError, match=r"train.output_dir: required"):
        load_recipe(recipe_dict)


def test_missing_data_file_and_unknown_template_are_reported_together(recipe_dict):
    recipe_dict["data"][0]["path"] = "nowhere.jsonl"
    recipe_dict["template"] = "nonsense"
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_dict)
    text = str(info.value)
    assert "data[0].path: file not found: nowhere.jsonl" in text
    assert "unknown template 'nonsense'" in text and "deepseek" in text


def test_unknown_backend_lists_known_ones(recipe_dict):
    recipe_dict["backend"] = "tpu"
    with pytest.raises(RecipeError, match=r"unknown backend 'tpu'. Known: auto, npu, cuda, cpu"):
        load_recipe(recipe_dict)


def test_invalid_yaml_names_the_line(write_recipe):
    with pytest.raises(UserError, match=r"recipe.yaml:4: not valid YAML: .*flow sequence that starts at line 3"):
        load_recipe(write_recipe("model:\n  name_or_path: m\n  dtype: [float32\n"))


def test_overrides_are_typed_by_the_schema(recipe_dict):
    recipe = load_recipe(recipe_dict, [
        "lora.r=16", "train.learning_rate=1e-4", "lora.target_modules=[q_proj, v_proj]",
        "train.run_name=123", "train.gradient_checkpointing=true", "template=chatml",
    ])
    assert recipe.lora.r == 16
    assert recipe.train["learning_rate"] == pytest.approx(1e-4)
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.train["run_name"] == "123"  # a string field keeps the text, not the int
    assert recipe.train["gradient_checkpointing"] is True
    assert recipe.template == "chatml"


def test_override_into_a_list_item(recipe_dict, conversation_file):
    recipe = load_recipe(recipe_dict, ["data.0.format=xtuner"])
    assert recipe.data[0].format == "xtuner"


def test_bad_override_values_name_the_override(recipe_dict):
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_dict, ["lora.r=zero", "train.learnig_rate=1"])
    text = str(info.value)
    assert "lora.r:" in text and "(from the override `lora.r=zero`)" in text
    assert "train.learnig_rate: unknown key. Did you mean `learning_rate`?" in text


def test_override_without_equals_is_explained(recipe_dict):
    with pytest.raises(UserError, match="write it as key.path=value"):
        load_recipe(recipe_dict, ["lora.r"])


def test_override_of_missing_list_item(recipe_dict):
    with pytest.raises(UserError, match=r"data has no item \[3\]"):
        load_recipe(recipe_dict, ["data.3.path=x"])


def test_recipe_file_not_found():
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe("no/such/recipe.yaml")


@pytest.mark.parametrize("name", ["self_identity.yaml", "counselling.yaml"])
def test_example_recipes_validate(name, monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)  # example paths are relative to the repository root
    recipe = load_recipe(REPO / "examples" / name)
    assert recipe.template == "deepseek"


def test_overrides_keep_yaml_words_where_a_word_fits_and_parse_lists(recipe_dict):
    recipe = load_recipe(recipe_dict, ["train.save_strategy=no", "eval_prompts=[]", "train.bf16=false",
                                       "system=123", "packing=yes"])
    assert str(recipe.train["save_strategy"]) in ("no", "SaveStrategy.NO", "IntervalStrategy.NO")
    assert recipe.eval_prompts == [] and recipe.train["bf16"] is False
    assert recipe.system == "123" and recipe.packing is True


def test_a_key_given_twice_names_both_lines(write_recipe, conversation_file):
    """YAML keeps the second of two equal keys without a word: the first `data:` would be lost."""
    path = write_recipe(textwrap.dedent(f"""\
        model:
          name_or_path: m
        data:
          - path: {conversation_file}
        data:
          - path: other.jsonl
        train:
          output_dir: out
        """))
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert str(info.value) == (f"{path}:5: data is given twice (lines 3 and 5); YAML would keep only the second. "
                               "Remove one, or merge them.")


def test_keys_from_llama_factory_recipes_are_named_by_portafts_own(recipe_dict):
    """lora_rank -> r is too unlike for a spelling match (a one-letter key); the names LLaMA-Factory
    and PEFT recipes use get portaft's."""
    recipe = {**recipe_dict, "lora": {"rank": 8, "lora_alpha": 16}, "train": {**recipe_dict["train"], "lr": 1e-4}}
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    text = str(info.value)
    assert "lora.rank: unknown key. Did you mean `r`?" in text
    assert "lora.lora_alpha: unknown key. Did you mean `alpha`?" in text
    assert "train.lr: unknown key. Did you mean `learning_rate`?" in text


@pytest.mark.parametrize("key, value, allowed", [
    ("num_train_epochs", -1, "more than 0"), ("max_steps", 0, "a number of steps above 0, or -1"),
    ("learning_rate", 0, "more than 0"), ("per_device_train_batch_size", 0, "1 or more"),
    ("gradient_accumulation_steps", 0, "1 or more"), ("warmup_steps", -5, "0 or more")])
def test_training_values_that_train_nothing_are_refused_with_their_path(recipe_dict, key, value, allowed):
    """TrainingArguments takes them, and the run would train 0 steps and exit 0 (or fail later)."""
    with pytest.raises(RecipeError) as info:
        load_recipe({**recipe_dict, "train": {**recipe_dict["train"], key: value}})
    assert f"train.{key}: {value} trains nothing or stops the run: give {allowed}" in str(info.value)
    assert load_recipe({**recipe_dict, "train": {**recipe_dict["train"], "max_steps": -1}}).train["max_steps"] == -1
