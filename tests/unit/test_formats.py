"""Every data format and file kind: the same conversation gives the same token ids."""

import json
from pathlib import Path

import pytest

from helpers import use_plugins
import portaft.data

SYSTEM, Q1, A1, Q2, A2 = "你是心理咨询师。", "我最近睡不好。", "从什么时候开始的？", "两周前。", "我们一起找找原因。"

# One two-turn conversation with a system prompt, written in every format.
SAME_CONVERSATION = {
    "xtuner": {"conversation": [{"system": SYSTEM, "input": Q1, "output": A1}, {"input": Q2, "output": A2}]},
    "alpaca": {"system": SYSTEM, "instruction": Q2, "input": "", "output": A2, "history": [[Q1, A1]]},
    "sharegpt": {"system": SYSTEM, "conversations": [
        {"from": "human", "value": Q1}, {"from": "gpt", "value": A1},
        {"from": "human", "value": Q2}, {"from": "gpt", "value": A2}]},
    "openai": {"messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": Q1}, {"role": "assistant", "content": A1},
        {"role": "user", "content": Q2}, {"role": "assistant", "content": [{"type": "text", "text": A2}]}]},
    "xtuner_nested": {"conversation": [{"system": SYSTEM, "input": {"conversation": [
        {"system": SYSTEM, "input": Q1, "output": A1}, {"input": Q2}]}, "output": A2}]},
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def load(recipe_dict, tokenizer, *sources, **extra):
    return portaft.data.load({**recipe_dict, "max_length": 256, **extra, "data": list(sources)}, tokenizer)


@pytest.fixture
def reference(recipe_dict, tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "ref.jsonl", [SAME_CONVERSATION["xtuner"]])
    return load(recipe_dict, tokenizer, {"path": str(path)})[0]


@pytest.mark.parametrize("fmt", sorted(SAME_CONVERSATION))
def test_the_same_conversation_in_every_format_encodes_identically(recipe_dict, tokenizer, tmp_path, reference, fmt):
    path = write_jsonl(tmp_path / f"{fmt}.jsonl", [SAME_CONVERSATION[fmt]])
    detected = load(recipe_dict, tokenizer, {"path": str(path)})[0]
    assert detected == reference
    named = fmt.split("_")[0]
    assert load(recipe_dict, tokenizer, {"path": str(path), "format": named})[0] == reference


def test_json_array_parquet_and_csv_read_like_jsonl(recipe_dict, tokenizer, tmp_path, reference):
    import pandas as pd

    array = tmp_path / "conv.json"
    array.write_text(json.dumps([SAME_CONVERSATION["openai"]] * 2, ensure_ascii=False), encoding="utf-8")
    parquet = tmp_path / "conv.parquet"
    pd.DataFrame([SAME_CONVERSATION["sharegpt"]] * 2).to_parquet(parquet)
    csv = tmp_path / "conv.csv"  # a flat table: alpaca, with the history as JSON text
    row = {**SAME_CONVERSATION["alpaca"], "history": json.dumps(SAME_CONVERSATION["alpaca"]["history"], ensure_ascii=False)}
    pd.DataFrame([row] * 2).to_csv(csv, index=False)
    for path in (array, parquet, csv):
        rows = load(recipe_dict, tokenizer, {"path": str(path)})
        assert rows[:] == {key: [reference[key]] * 2 for key in reference}, path.name


def test_a_folder_or_glob_reads_every_file(recipe_dict, tokenizer, tmp_path, reference):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [SAME_CONVERSATION["xtuner"]])
    write_jsonl(folder / "b.jsonl", [SAME_CONVERSATION["sharegpt"]] * 2)
    (folder / "notes.txt").write_text("not data", encoding="utf-8")
    assert len(load(recipe_dict, tokenizer, {"path": str(folder)})) == 3
    only_b = load(recipe_dict, tokenizer, {"path": str(folder / "b*.jsonl")})
    assert len(only_b) == 2 and only_b[0] == reference


def test_sources_in_different_formats_mix_in_one_run(recipe_dict, tokenizer, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [SAME_CONVERSATION["alpaca"]])
    b = write_jsonl(tmp_path / "b.jsonl", [SAME_CONVERSATION["openai"]] * 3)
    rows = load(recipe_dict, tokenizer, {"path": str(a)}, {"path": str(b)})
    assert len(rows) == 4 and len({tuple(r) for r in rows["input_ids"]}) == 1


def test_alpaca_joins_instruction_and_input_with_a_newline(recipe_dict, tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "翻译成英文", "input": "你好", "output": "Hello"}])
    text = tokenizer.decode(load(recipe_dict, tokenizer, {"path": str(path)})[0]["input_ids"])
    assert "User: 翻译成英文\n你好\n\nAssistant: Hello" in text


def test_recipe_system_overrides_the_datas_system_prompt(recipe_dict, tokenizer, tmp_path):
    with_system = write_jsonl(tmp_path / "x.jsonl", [SAME_CONVERSATION["xtuner"]])
    without = write_jsonl(tmp_path / "a.jsonl", [SAME_CONVERSATION["alpaca"] | {"system": None}])
    rows = load(recipe_dict, tokenizer, {"path": str(with_system)}, {"path": str(without)}, system="你是黄大力的智能助手。")
    for ids in rows["input_ids"]:
        text = tokenizer.decode(ids)
        assert text.startswith(f"{tokenizer.bos_token}你是黄大力的智能助手。\n\nUser: ") and SYSTEM not in text


def test_the_datasets_map_result_is_cached_and_invalidated_by_the_recipe(recipe_dict, tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [SAME_CONVERSATION["xtuner"]])
    first = load(recipe_dict, tokenizer, {"path": str(path)})
    again = load(recipe_dict, tokenizer, {"path": str(path)})
    other = load(recipe_dict, tokenizer, {"path": str(path)}, train_on="last_assistant")
    assert again[:] == first[:]
    assert first.cache_files and again.cache_files[0]["filename"] == first.cache_files[0]["filename"]
    assert other[0]["labels"] != first[0]["labels"]


def test_load_without_tokenizer_uses_the_recipes_model(recipe_dict):
    rows = portaft.data.load(recipe_dict)
    assert rows.column_names == ["input_ids", "attention_mask", "labels"]
    assert len(rows) == 8


def test_the_format_plugin_in_the_docs_registers_a_working_format(monkeypatch, recipe_dict, tokenizer, tmp_path,
                                                                   reference):
    """The code block on docs/plugins.md, run as a plugin module."""
    import re
    import types


    page = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text(encoding="utf-8")
    [code] = [b for b in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "def register_formats" in b]
    module = types.ModuleType("qa_format_plugin")
    exec(code, module.__dict__)
    use_plugins(monkeypatch, **{"qa-format": module})
    path = write_jsonl(tmp_path / "qa.jsonl", [{"sys": SYSTEM, "pairs": [[Q1, A1], [Q2, A2]]}])
    assert load(recipe_dict, tokenizer, {"path": str(path)})[0] == reference
    assert load(recipe_dict, tokenizer, {"path": str(path), "format": "qa-pairs"})[0] == reference
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"sys": SYSTEM, "pairs": "none"}])
    with pytest.raises(portaft.UserError, match=r"bad.jsonl:1: pairs must be a list"):
        load(recipe_dict, tokenizer, {"path": str(bad)})


def test_a_format_that_fails_with_any_error_is_named_as_validate_names_it(monkeypatch, recipe_dict, tokenizer,
                                                                          tmp_path):
    import types

    from portaft import hookimpl

    @hookimpl
    def register_formats(register):
        register("strict", lambda record: record["missing"], keys=("strict",))

    use_plugins(monkeypatch, **{"strict-format": types.SimpleNamespace(register_formats=register_formats)})
    path = write_jsonl(tmp_path / "s.jsonl", [{"strict": 1}])
    recipe = {**recipe_dict, "data": [{"path": str(path)}]}
    for attempt in (lambda: load(recipe_dict, tokenizer, {"path": str(path)}), lambda: portaft.data.check(recipe)):
        with pytest.raises(portaft.UserError, match=r"s.jsonl:1: KeyError: 'missing'\n") as caught:
            attempt()
        assert "cannot be rendered" not in str(caught.value)
