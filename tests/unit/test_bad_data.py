"""Bad records: one message per record naming file, line and field; all found in one pass; or skipped and counted."""

import json

import pytest

import portaft.data
from portaft import UserError, load_recipe
from portaft.plugins import get_plugins
from portaft.cli import main
from helpers import loads_no_model

GOOD = {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]}

# (line written, the message expected for it); line numbers count the blank line too
BAD_LINES = [
    ('{"messages": [{"role": "user", "content": "hi"}', r":3: not valid JSON"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}),
     r":4: messages\[1\].content is missing"),
    (json.dumps({"messages": []}), r":5: `messages` must be a non-empty list"),
    (json.dumps({"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "x"}]}),
     r":6: messages\[0\].content is of type int, not text"),
    (json.dumps({"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "x"}]}),
     r":7: messages\[0\].role: unknown role 'robot'"),
    (json.dumps({"messages": [{"role": "user", "content": "anyone?"}]}), r":8: the conversation has no assistant reply"),
]


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "chat.jsonl"
    lines = [json.dumps(GOOD, ensure_ascii=False), ""] + [line for line, _ in BAD_LINES] + [json.dumps(GOOD)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def bad_recipe(recipe_dict, bad_file):
    return {**recipe_dict, "data": [{"path": str(bad_file)}]}


def test_every_bad_record_is_named_with_file_line_and_field_in_one_error(bad_recipe, bad_file, tokenizer):
    with pytest.raises(UserError) as caught:
        portaft.data.load(bad_recipe, tokenizer)
    message = str(caught.value)
    assert message.startswith(f"{len(BAD_LINES)} bad record(s) in the data:")
    for _, expected in BAD_LINES:
        assert __import__("re").search(f"{bad_file}({expected})", message), expected
    assert "skip_bad_samples: true (or --skip-bad-samples)" in message


def test_validate_finds_them_all_without_a_model_and_exits_2(bad_recipe, write_recipe, capsys, monkeypatch):
    loads_no_model(monkeypatch)  # the tokenizer loads (the chat template is checked with it), the model never
    assert main(["validate", str(write_recipe(bad_recipe))]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"portaft: error: {len(BAD_LINES)} bad record(s)") and "Traceback" not in err
    assert err.count(str(bad_recipe["data"][0]["path"])) == len(BAD_LINES)


def test_skipping_bad_samples_counts_and_lists_them(bad_recipe, tokenizer, write_recipe, capsys):
    built = portaft.data.build(load_recipe({**bad_recipe, "skip_bad_samples": True}), tokenizer, get_plugins())
    assert len(built.dataset) == 2
    report = built.reports[0]
    assert (report.records, report.bad, report.samples) == (2 + len(BAD_LINES), len(BAD_LINES), 2)
    assert built.warnings[0] == (f"skipped {len(BAD_LINES)} of {2 + len(BAD_LINES)} records: 1 not valid JSON, "
                                 "1 missing text, 1 empty conversation, 1 text of another type, 1 unknown role, "
                                 "1 no assistant reply")
    assert len(built.warnings) == 1 + len(BAD_LINES) and len(built.skipped) == len(BAD_LINES)
    assert main(["validate", str(write_recipe(bad_recipe)), "--skip-bad-samples"]) == 0
    assert f"{2 + len(BAD_LINES)} records, {len(BAD_LINES)} bad (will be skipped)" in capsys.readouterr().out


def test_a_broken_json_array_names_its_line(recipe_dict, tokenizer, tmp_path):
    path = tmp_path / "chat.json"
    path.write_text('[\n  {"messages": []},\n  {"messages": [}\n]\n', encoding="utf-8")
    with pytest.raises(UserError, match=rf"{path}:3: not valid JSON.*cannot be skipped around"):
        portaft.data.load({**recipe_dict, "data": [{"path": str(path)}], "skip_bad_samples": True}, tokenizer)


def test_a_file_of_an_unknown_shape_lists_the_formats_and_is_never_skipped(recipe_dict, tokenizer, tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"question": "a", "answer": "b"}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"1 data file\(s\) cannot be used:\n  \S*odd.jsonl:1: cannot tell the data "
                                        r"format from the record's keys \(question, answer\).*alpaca \(instruction, output\)"):
        portaft.data.load({**recipe_dict, "data": [{"path": str(path)}], "skip_bad_samples": True}, tokenizer)


def test_an_empty_file_is_reported(recipe_dict, tokenizer, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match="empty.jsonl: holds no samples"):
        portaft.data.load({**recipe_dict, "data": [{"path": str(path)}]}, tokenizer)


def test_paths_and_formats_are_checked_with_the_recipe(recipe_dict, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x", encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_recipe({**recipe_dict, "data": [
            {"path": str(tmp_path / "missing.jsonl")},
            {"path": str(tmp_path / "docs")},
            {"path": str(tmp_path / "*.parquet")},
            {"path": recipe_dict["data"][0]["path"], "format": "xtunr"},
            {"path": recipe_dict["data"][0]["path"], "weight": 2, "samples": 3},
        ]})
    message = str(caught.value)
    assert "data[0].path: file not found" in message
    assert "data[1].path: the folder" in message and "holds no file portaft reads" in message
    assert "data[2].path: the glob" in message
    assert "data[3].format: unknown format 'xtunr'. Choose auto or one of: xtuner, sharegpt, openai, alpaca" in message
    assert "data[4]: Value error, set either weight or samples" in message


def test_samples_with_nothing_left_to_train_are_dropped_and_counted(recipe_dict, tokenizer, tmp_path):
    path = tmp_path / "long.jsonl"
    long_prompt = {"conversation": [{"input": "很长的问题" * 40, "output": "短答"}]}
    short = {"conversation": [{"input": "问", "output": "答"}]}
    path.write_text(json.dumps(long_prompt, ensure_ascii=False) + "\n" + json.dumps(short, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    built = portaft.data.build(load_recipe({**recipe_dict, "data": [{"path": str(path)}], "max_length": 32}), tokenizer, get_plugins())
    report = built.reports[0]
    assert (report.samples, report.dropped, report.truncated, report.truncated_in_prompt) == (1, 1, 1, 1)


def test_a_file_of_only_bad_lines_lists_each_line(recipe_dict, tokenizer, tmp_path):
    path = tmp_path / "all_bad.jsonl"
    path.write_text('{"messages": [\n\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"(?s)2 bad record\(s\).*all_bad.jsonl:1: not valid JSON.*all_bad.jsonl:3: a JSON list"):
        portaft.data.load({**recipe_dict, "data": [{"path": str(path)}]}, tokenizer)
