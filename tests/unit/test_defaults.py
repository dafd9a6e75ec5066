"""Defaults that learn: what portaft sets where a recipe is silent, and how the effective recipe says so."""

import yaml

from portaft import load_recipe
from portaft.recipe import dump_recipe
from portaft.recipe.defaults import apply_defaults


def minimal(recipe_dict):
    """Only what a new user writes: model, data, template, output folder."""
    return {key: recipe_dict[key] for key in ("model", "data", "template")} | {
        "train": {"output_dir": recipe_dict["train"]["output_dir"]}}


def test_a_minimal_lora_recipe_gets_a_lora_learning_rate_and_about_20_logged_points(recipe_dict):
    recipe = load_recipe(minimal(recipe_dict))
    notes = apply_defaults(recipe)
    assert recipe.train["learning_rate"] == 2e-4
    assert recipe.train["logging_steps"] == 0.025  # a fraction of the run's steps: every step under 40 steps
    assert recipe.train["remove_unused_columns"] is False
    assert any(n.startswith("train.learning_rate: unset -> 0.0002 (portaft's LoRA default") for n in notes)
    assert any(n.startswith("train.logging_steps: unset -> 0.025") for n in notes)


def test_what_the_recipe_says_is_kept(recipe_dict):
    recipe = load_recipe(minimal(recipe_dict) | {"train": {"output_dir": "o", "learning_rate": 1e-3,
                                                           "logging_steps": 7, "remove_unused_columns": True}})
    assert apply_defaults(recipe) == []
    assert (recipe.train["learning_rate"], recipe.train["logging_steps"]) == (1e-3, 7)


def test_full_fine_tuning_keeps_transformers_learning_rate(recipe_dict):
    recipe = load_recipe(minimal(recipe_dict) | {"finetune": "full"})
    apply_defaults(recipe)
    assert "learning_rate" not in recipe.train


def test_whole_numbers_stay_ints_in_the_effective_recipe(recipe_dict):
    recipe_dict["train"].update(num_train_epochs=3, logging_steps=10, warmup_steps=5, max_grad_norm=1)
    written = dump_recipe(load_recipe(recipe_dict))
    train = yaml.safe_load(written)["train"]
    for key in ("num_train_epochs", "logging_steps", "warmup_steps", "max_grad_norm"):
        assert type(train[key]) is int, (key, train[key])
    assert "num_train_epochs: 3\n" in written
