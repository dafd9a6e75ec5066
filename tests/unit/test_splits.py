"""val_size: a seeded share of each source held out for evaluation, never trained on."""

import pytest

from portaft import RecipeError, UserError, load_recipe
from portaft.data.splits import held_out_count, split_off


def test_a_fraction_or_a_count_is_held_out_the_same_way_every_time():
    train, held = split_off(100, 0.1, seed=42, source_index=0, where="data[0].val_size")
    assert len(held) == 10 and len(train) == 90 and not set(train) & set(held)
    assert split_off(100, 0.1, 42, 0, "w") == (train, held)  # fixed by the seed
    assert split_off(100, 0.1, 43, 0, "w")[1] != held and split_off(100, 0.1, 42, 1, "w")[1] != held
    assert held_out_count(100, 7) == 7 and held_out_count(5, 0.01) == 1 and held_out_count(5, None) == 0


def test_holding_out_everything_is_refused():
    with pytest.raises(UserError, match="data\\[0\\].val_size: val_size 8 holds out 8 of the source's 8"):
        split_off(8, 8, 42, 0, "data[0].val_size")


def test_val_size_is_a_fraction_below_one_or_a_whole_count(recipe_dict):
    assert load_recipe({**recipe_dict, "val_size": 0.2}).val_size == 0.2
    assert load_recipe({**recipe_dict, "val_size": 3}).val_size == 3
    with pytest.raises(RecipeError, match="val_size: .*a fraction below 1"):
        load_recipe({**recipe_dict, "val_size": 2.5})
    recipe = load_recipe({**recipe_dict, "eval_data": [{"path": recipe_dict["data"][0]["path"]}]})
    assert recipe.eval_data[0].path == recipe_dict["data"][0]["path"] and recipe.eval_max_new_tokens == 48


def test_eval_data_and_a_held_out_share_reach_the_trainer(recipe_dict, tokenizer):
    from portaft import data
    from portaft.plugins import get_plugins

    recipe = load_recipe({**recipe_dict, "val_size": 2, "eval_data": [{"path": recipe_dict["data"][0]["path"],
                                                                        "samples": 3}]})
    built = data.build(recipe, tokenizer, get_plugins())
    assert len(built.dataset) == 6 and built.reports[0].held_out == 2  # the conversation file holds 8
    assert built.reports[0].dropped == 0 and built.reports[0].samples == 6
    assert len(built.eval_dataset) == 2 + 3 and built.eval_reports[0].samples == 3
