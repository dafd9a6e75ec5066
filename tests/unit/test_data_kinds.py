"""Data honesty: kinds portaft cannot train are refused or skipped and counted (never trained
as SFT), per-message loss flags, pretraining text, tool calls, column mapping, and the
diagnostics a user reads (true line numbers, counts by reason, skipped.jsonl)."""

import json
from types import SimpleNamespace

import pytest

import portaft.data
from portaft import UserError, load_recipe
from portaft.cli import main
from portaft.plugins import get_plugins

CHAT = {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]}
DPO = {"instruction": "Pick one", "input": "", "chosen": "GOOD ANSWER", "rejected": "BAD ANSWER"}
KTO = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "UNDESIRABLE"}], "label": False}
IMAGE = {"messages": [{"role": "user", "content": "<image>Who?"}, {"role": "assistant", "content": "SOMEONE"}],
         "images": ["1.jpg"]}
PLACEHOLDER_ONLY = {"messages": [{"role": "user", "content": "<image>\nWhat is it?"},
                                 {"role": "assistant", "content": "A CAT"}]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def trained_text(tokenizer, row):
    return tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])


def recipe_with(recipe_dict, *sources, **extra):
    return {**recipe_dict, "max_length": 256, **extra, "data": list(sources)}


def test_records_of_untrainable_kinds_are_skipped_and_counted_never_trained(recipe_dict, tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [CHAT, KTO, IMAGE, PLACEHOLDER_ONLY, CHAT])
    built = portaft.data.build(load_recipe(recipe_with(recipe_dict, {"path": str(path)}, skip_bad_samples=True)),
                               tokenizer, get_plugins())
    assert len(built.dataset) == 2
    everything = "".join(tokenizer.decode(row["input_ids"]) for row in built.dataset)
    assert "UNDESIRABLE" not in everything and "SOMEONE" not in everything and "A CAT" not in everything
    assert built.warnings[0].startswith("skipped 3 of 5 records: ")
    assert "2 multimodal data (images, audio, video)" in built.warnings[0]
    assert "1 KTO data (desirable/undesirable label)" in built.warnings[0]
    assert [p.where for p in built.skipped] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert "the user message holds the placeholder '<image>'" in built.skipped[2].why


def test_a_preference_file_is_refused_naming_the_kind_even_though_its_format_is_unknown(recipe_dict, tokenizer,
                                                                                       tmp_path):
    path = write_jsonl(tmp_path / "dpo.jsonl", [DPO, DPO])
    with pytest.raises(UserError) as caught:
        portaft.data.load(recipe_with(recipe_dict, {"path": str(path)}), tokenizer)
    message = str(caught.value)
    assert f"{path}:1: preference (DPO) data: the record has `chosen`" in message
    assert "DPOTrainer" in message  # what to do
    # skipped, they leave nothing to train: said so, never trained as prompts without replies
    with pytest.raises(UserError, match="no sample has any assistant token left"):
        portaft.data.load(recipe_with(recipe_dict, {"path": str(path)}, skip_bad_samples=True), tokenizer)


def test_validate_reports_the_same_kinds_and_tools_the_template_cannot_render(recipe_dict, tokenizer, tmp_path,
                                                                              write_recipe, capsys):
    tools = {"messages": [{"role": "user", "content": "weather?"},
                          {"role": "assistant", "content": None, "tool_calls": [
                              {"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                          {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]}
    path = write_jsonl(tmp_path / "mixed.jsonl", [CHAT, KTO, tools])
    recipe = write_recipe(recipe_with(recipe_dict, {"path": str(path)}))  # template deepseek: no tool support
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: KTO data" in err and f"{path}:3: tool calling (function calls): the chat template " \
                                             "'deepseek' does not render tools" in err
    qwen = write_recipe(recipe_with(recipe_dict, {"path": str(path)}, template="qwen"), "qwen.yaml")
    assert main(["validate", str(qwen), "--skip-bad-samples"]) == 0
    out = capsys.readouterr().out
    assert "3 records, 1 bad (will be skipped)" in out
    assert "note: skipped 1 of 3 records: 1 KTO data (desirable/undesirable label)" in out


def test_tool_calls_are_trained_and_tool_results_are_not_with_ids_of_apply_chat_template(recipe_dict, tokenizer,
                                                                                         tmp_path):
    record = {"tools": json.dumps([{"name": "get_weather", "description": "Weather of a city",
                                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]),
              "conversations": [{"from": "human", "value": "Weather in Paris?"},
                                {"from": "function_call", "value": json.dumps({"name": "get_weather",
                                                                               "arguments": {"city": "Paris"}})},
                                {"from": "observation", "value": "RAINY 12C"},
                                {"from": "gpt", "value": "It rains in Paris."}]}
    path = write_jsonl(tmp_path / "glaive.jsonl", [record])
    recipe = recipe_with(recipe_dict, {"path": str(path)}, template="qwen", max_length=1024)
    row = portaft.data.load(recipe, tokenizer)[0]
    trained = trained_text(tokenizer, row)
    assert '"name": "get_weather", "arguments": {"city": "Paris"}' in trained and "It rains in Paris." in trained
    assert "RAINY" not in trained and "Weather in Paris?" not in trained
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "RAINY 12C"}, {"role": "assistant", "content": "It rains in Paris."}]
    tools = [{"type": "function", "function": json.loads(record["tools"])[0]}]
    from portaft.data.chat_templates import BUILT_IN

    expected = tokenizer.apply_chat_template(messages, tools=tools, chat_template=BUILT_IN["qwen"], tokenize=False)
    assert list(row["input_ids"]) == tokenizer(expected, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("flag", [{"weight": 0}, {"loss": False}, {"loss_weight": 0.0}])
def test_a_reply_flagged_untrained_is_not_trained(recipe_dict, tokenizer, tmp_path, flag):
    record = {"messages": [{"role": "user", "content": "Capital of France?"},
                           {"role": "assistant", "content": "FLAGGED REPLY", **flag},
                           {"role": "user", "content": "Again?"}, {"role": "assistant", "content": "Paris."}]}
    path = write_jsonl(tmp_path / "flags.jsonl", [record])
    row = portaft.data.load(recipe_with(recipe_dict, {"path": str(path)}), tokenizer)[0]
    assert "FLAGGED REPLY" in tokenizer.decode(row["input_ids"])
    assert "FLAGGED" not in trained_text(tokenizer, row) and "Paris." in trained_text(tokenizer, row)


def test_a_sharegpt_turn_with_weight_0_is_not_trained(recipe_dict, tokenizer, tmp_path):
    record = {"conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "SKIP ME", "weight": 0},
                                {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "TRAIN ME"}]}
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [record])
    row = portaft.data.load(recipe_with(recipe_dict, {"path": str(path)}), tokenizer)[0]
    assert trained_text(tokenizer, row) == " TRAIN ME" + tokenizer.eos_token


def test_a_partial_loss_weight_is_refused_with_what_to_write(recipe_dict, tokenizer, tmp_path):
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0.5}]}
    path = write_jsonl(tmp_path / "half.jsonl", [record])
    with pytest.raises(UserError, match=r"half.jsonl:1: messages\[1\].weight is 0.5; portaft trains a reply fully"):
        portaft.data.load(recipe_with(recipe_dict, {"path": str(path)}), tokenizer)


def test_preview_shows_a_flagged_reply_untrained(recipe_dict, tmp_path, write_recipe, capsys):
    record = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "NOT THIS", "loss": False},
                           {"role": "user", "content": "Q2?"}, {"role": "assistant", "content": "THIS"}]}
    path = write_jsonl(tmp_path / "flags.jsonl", [record])
    assert main(["preview", str(write_recipe(recipe_with(recipe_dict, {"path": str(path)}))), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "Assistant: NOT THIS" in out and "⟦ THIS" in out and "⟦ NOT THIS" not in out


def test_pretraining_text_has_no_template_every_token_trained_and_a_note(recipe_dict, tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "pt.jsonl", [{"text": "Plain text to continue pretraining on."}])
    built = portaft.data.build(load_recipe(recipe_with(recipe_dict, {"path": str(path)})),
                               tokenizer, get_plugins())
    row = built.dataset[0]
    text = "Plain text to continue pretraining on." + tokenizer.eos_token
    assert list(row["input_ids"]) == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert list(row["labels"]) == [-100] + list(row["input_ids"][1:])
    assert built.reports[0].pretraining == 1
    assert any("pretraining text: continued pretraining, no chat template, loss on every token" in n
               for n in built.notes)
    xtuner = write_jsonl(tmp_path / "xt.jsonl", [{"conversation": [{"input": "", "output": "XTuner pretraining text."}]}])
    row = portaft.data.load(recipe_with(recipe_dict, {"path": str(xtuner)}), tokenizer)[0]
    assert tokenizer.decode(row["input_ids"]) == "XTuner pretraining text." + tokenizer.eos_token


def test_inline_column_mapping_reads_custom_sharegpt_tags(recipe_dict, tokenizer, tmp_path):
    record = {"dialog": [{"speaker": "client", "text": "I can't sleep."},
                         {"speaker": "counsellor", "text": "Since when?"}], "sys": "You are a counsellor."}
    path = write_jsonl(tmp_path / "custom.jsonl", [record])
    source = {"path": str(path), "formatting": "sharegpt", "columns": {"messages": "dialog", "system": "sys"},
              "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "client",
                       "assistant_tag": "counsellor"}}
    row = portaft.data.load(recipe_with(recipe_dict, source), tokenizer)[0]
    assert tokenizer.decode(row["input_ids"]).startswith(tokenizer.bos_token + "You are a counsellor.\n\nUser: I can't")
    assert trained_text(tokenizer, row) == " Since when?" + tokenizer.eos_token


def test_a_dataset_info_entry_gives_the_file_and_its_columns(recipe_dict, tokenizer, tmp_path):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "qa.jsonl", [{"q": "Who are you?", "a": "EmoLLM.", "kto": True}])
    info = {"qa": {"file_name": "qa.jsonl", "columns": {"prompt": "q", "response": "a"}},
            "qa_kto": {"file_name": "qa.jsonl", "columns": {"prompt": "q", "response": "a", "kto_tag": "kto"}},
            "hub": {"hf_hub_url": "someone/data"}}
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    entry = {"dataset_info": str(tmp_path / "data" / "dataset_info.json"), "name": "qa"}
    row = portaft.data.load(recipe_with(recipe_dict, entry), tokenizer)[0]
    assert trained_text(tokenizer, row) == " EmoLLM." + tokenizer.eos_token
    with pytest.raises(UserError, match="KTO data"):
        portaft.data.load(recipe_with(recipe_dict, {**entry, "name": "qa_kto"}), tokenizer)
    with pytest.raises(UserError, match=r"data\[0\].*'hub'.*hf_hub_url: someone/data; portaft reads local files only"):
        load_recipe(recipe_with(recipe_dict, {**entry, "name": "hub"}))
    with pytest.raises(UserError, match=r"data\[0\].*columns.answer: unknown for formatting alpaca"):
        load_recipe(recipe_with(recipe_dict, {"path": str(tmp_path / "data" / "qa.jsonl"), "formatting": "alpaca",
                                              "columns": {"answer": "a"}}))


def test_a_folder_source_never_reads_dataset_info_json_as_data(recipe_dict, tokenizer, tmp_path):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "chat.jsonl", [CHAT])
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"chat": {"file_name": "chat.jsonl"}}))
    built = portaft.data.build(load_recipe(recipe_with(recipe_dict, {"path": str(tmp_path / "data")})), tokenizer,
                               get_plugins())
    assert (built.reports[0].files, built.reports[0].records) == (1, 1)


def test_ms_swift_query_response_is_detected(recipe_dict, tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "swift.jsonl", [{"system": "S", "query": "Q2", "response": "A2",
                                                   "history": [["Q1", "A1"]]}])
    row = portaft.data.load(recipe_with(recipe_dict, {"path": str(path)}), tokenizer)[0]
    assert tokenizer.decode(row["input_ids"]) == (tokenizer.bos_token + "S\n\nUser: Q1\n\nAssistant: A1"
                                                  + tokenizer.eos_token + "User: Q2\n\nAssistant: A2"
                                                  + tokenizer.eos_token)


def test_a_prompt_response_record_keeps_its_prompt(recipe_dict, tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "pr.jsonl", [{"prompt": "THE PROMPT", "response": "THE ANSWER"}])
    row = portaft.data.load(recipe_with(recipe_dict, {"path": str(path)}), tokenizer)[0]
    assert "User: THE PROMPT" in tokenizer.decode(row["input_ids"])
    assert trained_text(tokenizer, row) == " THE ANSWER" + tokenizer.eos_token


def test_a_pretty_printed_json_array_saved_as_jsonl_is_read_with_true_lines(recipe_dict, tokenizer, tmp_path):
    path = tmp_path / "pretty.jsonl"
    path.write_text(json.dumps([CHAT, {"messages": []}, CHAT], ensure_ascii=False, indent=4), encoding="utf-8")
    built = portaft.data.build(load_recipe(recipe_with(recipe_dict, {"path": str(path)}, skip_bad_samples=True)),
                               tokenizer, get_plugins())
    assert len(built.dataset) == 2
    second = [n for n, text in enumerate(path.read_text().splitlines(), 1) if text == "    {"][1]
    assert [p.where for p in built.skipped] == [f"{path}:{second} (sample 2)"]
    assert any("holds one JSON document (pretty-printed JSON)" in note for note in built.notes)


def test_a_jsonl_of_lists_says_each_line_must_be_one_record(recipe_dict, tokenizer, tmp_path):
    path = tmp_path / "lists.jsonl"
    path.write_text(json.dumps(CHAT["messages"]) + "\n" + json.dumps(CHAT["messages"]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r'lists.jsonl:1: a JSON list; each line must be one JSON object \(a record\), '
                                        r'e.g. \{"messages": \[...\]\} around a list of messages.'):
        portaft.data.load(recipe_with(recipe_dict, {"path": str(path)}), tokenizer)


def test_many_skipped_records_are_counted_the_first_shown_and_all_written_to_skipped_jsonl(recipe_dict, tokenizer,
                                                                                          tmp_path):
    from portaft.runner.dataset import read_data
    from portaft.runner.notes import Notes

    rows = [CHAT] * 5 + [{"messages": []}] * 25 + [KTO] * 5
    path = write_jsonl(tmp_path / "many.jsonl", rows)
    recipe = load_recipe(recipe_with(recipe_dict, {"path": str(path)}, skip_bad_samples=True))
    said = []
    notes = Notes(echo=said.append)
    resolved = SimpleNamespace(recipe=recipe, plugins=get_plugins(),
                               backend=SimpleNamespace(load_tokenizer=lambda r: tokenizer))
    out = tmp_path / "out"
    world = SimpleNamespace(args=SimpleNamespace(main_process_first=_no_wait), first=True, output_dir=out)
    _, built = read_data(resolved, world, notes)
    assert built.warnings[0] == "skipped 30 of 35 records: 25 empty conversation, 5 KTO data (desirable/undesirable label)"
    assert len(built.warnings) == 1 + 10 + 1 and built.warnings[-1].startswith("... and 20 more")
    written = [json.loads(line) for line in (out / "skipped.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(written) == 30 and written[0]["where"] == f"{path}:6" and written[-1]["reason"].startswith("KTO")
    assert "portaft: warning: ... and 20 more" in "\n".join(said)[:100000] or any("and 20 more" in s for s in said)


def _no_wait(desc=""):
    import contextlib

    return contextlib.nullcontext()
