"""Reading the XTuner / EmoLLM conversation format and the encoded dataset."""

import json

import pytest

import portaft.data
from portaft import UserError


def test_jsonl_and_json_array_give_the_same_dataset(recipe_dict, conversation_file, tmp_path, tokenizer):
    rows = [json.loads(line) for line in conversation_file.read_text(encoding="utf-8").splitlines()]
    as_array = tmp_path / "identity.json"
    as_array.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    from_jsonl = portaft.data.load(recipe_dict, tokenizer)
    from_json = portaft.data.load({**recipe_dict, "data": [{"path": str(as_array), "format": "xtuner"}]}, tokenizer)
    assert from_jsonl.column_names == ["input_ids", "attention_mask", "labels"]
    assert len(from_jsonl) == len(rows) == 8
    assert from_jsonl[:] == from_json[:]


def test_load_without_tokenizer_uses_the_recipes_model(recipe_dict):
    dataset = portaft.data.load(recipe_dict)
    assert len(dataset) == 8


def test_multi_turn_sample_trains_every_reply(recipe_dict, tokenizer):
    sample = portaft.data.load(recipe_dict, tokenizer)[1]
    trained = tokenizer.decode([t for t, l in zip(sample["input_ids"], sample["labels"]) if l != -100])
    assert "Huang Dali made me." in trained and "Answer questions." in trained
    assert "Who made you?" not in trained
    assert trained.count(tokenizer.eos_token) == 2


@pytest.mark.parametrize("row, message", [
    ({"conversation": []}, r"sample 2: `conversation` must be a non-empty list"),
    ({"conversation": [{"input": "hi"}]}, r"sample 2: conversation\[0\].output is missing"),
    ({"conversation": [{"input": 3, "output": "x"}]}, r"sample 2: conversation\[0\].input is of type int, not text"),
])
def test_bad_samples_name_file_sample_and_field(recipe_dict, tokenizer, tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    good = {"conversation": [{"input": "hi", "output": "hello"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=f"{path}: {message}"):
        portaft.data.load({**recipe_dict, "data": [{"path": str(path)}]}, tokenizer)


def test_malformed_json_is_a_user_error(recipe_dict, tokenizer, tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"conversation": [{"input": "a", "output": "b"}]}\n{"conversation": [\n', encoding="utf-8")
    with pytest.raises(UserError, match=f"{path}: cannot be read as JSON/JSONL"):
        portaft.data.load({**recipe_dict, "data": [{"path": str(path)}]}, tokenizer)


def test_unknown_format_is_explained(recipe_dict, tokenizer, tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="cannot tell the data format.*instruction, output"):
        portaft.data.load({**recipe_dict, "data": [{"path": str(path)}]}, tokenizer)
