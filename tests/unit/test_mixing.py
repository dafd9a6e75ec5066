"""Mixing sources by weight or sample count: exact amounts, deterministic in the seed, reported."""

import json
from collections import Counter

import portaft.data
from portaft import load_recipe
from portaft.plugins import get_plugins
from portaft.data.mixing import mixed_rows


def write_questions(path, prefix, count):
    rows = [{"instruction": f"{prefix} 问题 {i}", "output": f"回答 {i}"} for i in range(count)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def build(recipe_dict, tokenizer, sources, seed=1):
    recipe = {**recipe_dict, "data": sources, "train": {**recipe_dict["train"], "seed": seed}}
    return portaft.data.build(load_recipe(recipe), tokenizer, get_plugins())


def sources_of(tokenizer, built):
    texts = [tokenizer.decode(ids) for ids in built.dataset["input_ids"]]
    return Counter(text.split("User: ")[1].split(" ")[0] for text in texts), texts


def test_weight_and_samples_set_each_sources_share(recipe_dict, tokenizer, tmp_path):
    general = write_questions(tmp_path / "general.jsonl", "通用", 10)
    identity = write_questions(tmp_path / "identity.jsonl", "身份", 4)
    built = build(recipe_dict, tokenizer, [{"path": general, "weight": 0.5}, {"path": identity, "samples": 10}])
    counts, texts = sources_of(tokenizer, built)
    assert counts == {"通用": 5, "身份": 10}
    identity_texts = Counter(t for t in texts if "身份" in t)
    assert sorted(identity_texts.values()) == [2, 2, 3, 3]  # every sample twice, two of them a third time
    report = {r.path: (r.available, r.samples) for r in built.reports}
    assert report == {general: (10, 5), identity: (4, 10)}
    assert built.lengths == [len(ids) for ids in built.dataset["input_ids"]]


def test_the_mix_is_deterministic_in_the_seed(recipe_dict, tokenizer, tmp_path):
    general = write_questions(tmp_path / "general.jsonl", "通用", 20)
    sources = [{"path": general, "weight": 0.25}]
    first = build(recipe_dict, tokenizer, sources, seed=1).dataset["input_ids"]
    again = build(recipe_dict, tokenizer, sources, seed=1).dataset["input_ids"]
    other = build(recipe_dict, tokenizer, sources, seed=2).dataset["input_ids"]
    assert first == again and len(first) == 5
    assert first != other


def test_mixed_rows_arithmetic():
    assert mixed_rows(4, None, None, 0, 0) == [0, 1, 2, 3]
    assert mixed_rows(4, 1.0, None, 0, 0) == [0, 1, 2, 3]
    assert len(mixed_rows(10, 0.33, None, 0, 0)) == 3
    rows = mixed_rows(3, 2.5, None, 0, 0)  # round(7.5) = 8: every row twice and two more
    assert len(rows) == 8 and sorted(Counter(rows).values()) == [2, 3, 3]
    assert mixed_rows(5, None, 2, 7, 0) == mixed_rows(5, None, 2, 7, 0)
    assert len(mixed_rows(5, None, 2, 7, 0)) == 2
