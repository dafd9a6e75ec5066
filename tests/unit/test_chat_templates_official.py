"""qwen3, qwen3_nothink, mistral, gemma and llama3.1 equal their models' official templates token for token,
and the loss trains exactly the replies and their end-of-turn.

The official Jinja is embedded as a fixture (official_chat_templates.json), copied from other
repositories than portaft's own copies where one was found (the source of each is in the file).
The tokenizer is the tiny DeepSeek one with each family's markers added as special tokens and
its bos/eos set to the family's, so ids split as the model's own tokenizer splits them.
"""

import json
from pathlib import Path

import pytest

from portaft import UserError
from portaft.compat import chat_template_renderer
from portaft.data.chat_templates import BUILT_IN, guess_template
from portaft.data.encode import IGNORE, EncodeSettings, Encoder
from portaft.data.formats import Format
from portaft.data.templates import check_template, choose_template, reply_ending, stop_token_ids

OFFICIAL = {name: entry["template"] for name, entry in
            json.loads((Path(__file__).parent / "official_chat_templates.json").read_text(encoding="utf-8")).items()}

SYSTEM = {"role": "system", "content": "你是心理咨询师。"}
CHINESE = [
    {"role": "user", "content": "我最近睡不好。"},
    {"role": "assistant", "content": "可以说说是从什么时候开始的吗？"},
    {"role": "user", "content": "两周前。"},
    {"role": "assistant", "content": "我们一起找找原因。"},
]
ONE_TURN = [{"role": "user", "content": "Who made you?"}, {"role": "assistant", "content": "Huang Dali made me."}]
# replies with surrounding whitespace (templates that trim them re-render the reply), three turns
THREE_TURNS = [
    {"role": "user", "content": "  你好 "}, {"role": "assistant", "content": " 你好！\n"},
    {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
    {"role": "user", "content": "谢谢"}, {"role": "assistant", "content": "不客气。"},
]
WITHOUT_SYSTEM = [CHINESE, ONE_TURN, THREE_TURNS]
WITH_SYSTEM = [[SYSTEM, *conversation] for conversation in WITHOUT_SYSTEM]

FAMILIES = {  # bos, eos, the markers the family's tokenizer has as single tokens
    "qwen3": (None, "<|im_end|>", ["<|im_start|>", "<think>", "</think>"]),
    "mistral": ("<s>", "</s>", ["[INST]", "[/INST]"]),
    "gemma": ("<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>"]),
    "llama3.1": ("<|begin_of_text|>", "<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>"]),
}


@pytest.fixture(scope="module")
def family_tokenizers(tiny_model):
    from transformers import AutoTokenizer

    made = {}
    for family, (bos, eos, markers) in FAMILIES.items():
        tokenizer = AutoTokenizer.from_pretrained(tiny_model)
        special = {"eos_token": eos, "additional_special_tokens": markers}
        if bos:
            special["bos_token"] = bos
        tokenizer.add_special_tokens(special)
        tokenizer.pad_token = tokenizer.eos_token
        made[family] = tokenizer
    return made


def encode(tokenizer, template, messages):
    """One conversation through the encoder training uses: (ids, labels, error)."""
    as_record = Format("messages", lambda record: record["messages"], ("messages",))
    out = Encoder(tokenizer, as_record, EncodeSettings(template, 4096, "assistant", None))({"messages": [messages]})
    if out["error"][0]:
        return None, None, out["error"][0]
    return list(out["input_ids"][0]), list(out["labels"][0]), ""


def official_ids(tokenizer, template, messages, **kwargs):
    ids = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True, **kwargs)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def trained_runs(tokenizer, ids, labels):
    """The text of each run of consecutive trained tokens."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


# (portaft template, family, official fixture, apply_chat_template kwargs, conversations)
EQUAL = [
    ("qwen3", "qwen3", "qwen3-2025-07", {}, WITH_SYSTEM + WITHOUT_SYSTEM),
    ("qwen3", "qwen3", "qwen3-2025-04", {}, WITH_SYSTEM + WITHOUT_SYSTEM),
    ("qwen3_nothink", "qwen3", "qwen3-2025-07", {"enable_thinking": False}, WITH_SYSTEM + WITHOUT_SYSTEM),
    ("qwen3_nothink", "qwen3", "qwen3-2025-04", {"enable_thinking": False}, WITH_SYSTEM + WITHOUT_SYSTEM),
    ("mistral", "mistral", "mistral-v3", {}, WITHOUT_SYSTEM),  # with a system prompt: refused, below
    ("gemma", "gemma", "gemma-3", {}, WITH_SYSTEM + WITHOUT_SYSTEM),
    ("gemma", "gemma", "gemma-2", {}, WITHOUT_SYSTEM),  # Gemma 2's template raises on a system prompt
    ("llama3.1", "llama3.1", "llama-3.3", {}, WITH_SYSTEM + WITHOUT_SYSTEM),
]


@pytest.mark.parametrize("name, family, official, kwargs, conversations", EQUAL,
                         ids=[f"{case[0]}={case[2]}" for case in EQUAL])
def test_portaft_encodes_what_the_official_template_encodes(family_tokenizers, name, family, official, kwargs,
                                                            conversations):
    tokenizer = family_tokenizers[family]
    for messages in conversations:
        ids, _, error = encode(tokenizer, BUILT_IN[name], messages)
        assert error == ""
        assert ids == official_ids(tokenizer, OFFICIAL[official], messages, **kwargs)
        for prompt in (messages[:-1], messages[:1 + (messages[0]["role"] == "system")]):  # what chat and eval send
            mine = chat_template_renderer(tokenizer, BUILT_IN[name])(prompt, add_generation_prompt=True)
            theirs = tokenizer.apply_chat_template(prompt, chat_template=OFFICIAL[official], tokenize=False,
                                                   add_generation_prompt=True, **kwargs)
            assert mine == theirs


TRAINED = {  # the Chinese conversation's trained text: each reply and its end-of-turn, nothing of the prompts
    "qwen3": ["可以说说是从什么时候开始的吗？<|im_end|>\n",
              "<think>\n\n</think>\n\n我们一起找找原因。<|im_end|>\n"],
    "qwen3_nothink": ["可以说说是从什么时候开始的吗？<|im_end|>\n", "我们一起找找原因。<|im_end|>\n"],
    "mistral": [" 可以说说是从什么时候开始的吗？</s>", " 我们一起找找原因。</s>"],
    "gemma": ["可以说说是从什么时候开始的吗？<end_of_turn>\n", "我们一起找找原因。<end_of_turn>\n"],
    "llama3.1": ["可以说说是从什么时候开始的吗？<|eot_id|>", "我们一起找找原因。<|eot_id|>"],
}


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_only_the_replies_and_their_end_of_turn_are_trained(family_tokenizers, name):
    tokenizer = family_tokenizers[name.removesuffix("_nothink")]
    messages = CHINESE if name == "mistral" else [SYSTEM, *CHINESE]
    ids, labels, error = encode(tokenizer, BUILT_IN[name], messages)
    assert error == ""
    assert trained_runs(tokenizer, ids, labels) == TRAINED[name]
    assert all(label in (IGNORE, token) for token, label in zip(ids, labels))
    if name == "qwen3_nothink":  # the empty think block is the prompt's, as at inference
        assert "<think>\n\n</think>\n\n我们一起找找原因" in tokenizer.decode(ids)


@pytest.mark.parametrize("name, ending, stop", [
    ("qwen3", "<|im_end|>\n", ["<|im_end|>"]),
    ("qwen3_nothink", "<|im_end|>\n", ["<|im_end|>"]),
    ("mistral", "</s>", ["</s>"]),
    ("gemma", "<end_of_turn>\n", ["<eos>", "<end_of_turn>"]),
    ("llama3.1", "<|eot_id|>", ["<|eot_id|>"]),
])
def test_each_template_passes_portafts_checks_and_stops_at_its_end_of_turn(family_tokenizers, name, ending, stop):
    tokenizer = family_tokenizers[name.removesuffix("_nothink")]
    render = chat_template_renderer(tokenizer, BUILT_IN[name])
    assert check_template(render, name, tokenizer) == ending == reply_ending(render)
    assert stop_token_ids(tokenizer, BUILT_IN[name]) == tokenizer.convert_tokens_to_ids(stop)


def test_qwen3_trains_the_reasoning_of_the_last_reply_as_qwen_renders_it(family_tokenizers):
    tokenizer = family_tokenizers["qwen3"]
    reasoning = {**CHINESE[-1], "reasoning_content": "先问起因，再给建议。"}
    inline = {**CHINESE[-1], "content": "<think>\n先问起因，再给建议。\n</think>\n\n我们一起找找原因。"}
    for last in (reasoning, inline):
        messages = [SYSTEM, *CHINESE[:-1], last]
        ids, labels, error = encode(tokenizer, BUILT_IN["qwen3"], messages)
        assert error == ""
        for official in ("qwen3-2025-07", "qwen3-2025-04"):
            assert ids == official_ids(tokenizer, OFFICIAL[official], messages)
        expected = "<think>\n先问起因，再给建议。\n</think>\n\n我们一起找找原因。<|im_end|>\n"
        assert trained_runs(tokenizer, ids, labels)[-1] == expected


def test_reasoning_a_template_would_drop_is_refused_not_trained_without_it(family_tokenizers):
    tokenizer = family_tokenizers["qwen3"]
    early = [SYSTEM, CHINESE[0], {**CHINESE[1], "reasoning_content": "先问起因。"}, *CHINESE[2:]]
    _, _, error = encode(tokenizer, BUILT_IN["qwen3"], early)
    assert "message 3 has reasoning (reasoning_content or <think>), but the chat template does not render it" in error
    assert "after the last user message" in error
    inline = [SYSTEM, CHINESE[0], {**CHINESE[1], "content": "<think>先问起因。</think>" + CHINESE[1]["content"]}, *CHINESE[2:]]
    assert "message 3 has reasoning" in encode(tokenizer, BUILT_IN["qwen3"], inline)[2]
    assert encode(tokenizer, BUILT_IN["chatml"], inline)[2] == ""  # written as it is, so trained as it is
    last = [SYSTEM, *CHINESE[:-1], {**CHINESE[-1], "reasoning_content": "先问起因。"}]
    _, _, error = encode(tokenizer, BUILT_IN["chatml"], last)
    assert "reasoning" in error and "does not render" in error  # refused as a kind before masking (issue 26)
    _, _, error = encode(tokenizer, BUILT_IN["qwen3_nothink"], last)
    assert "message 5 has reasoning, but this template's generation prompt closes the thinking" in error


def test_mistral_refuses_a_system_prompt_its_template_would_drop(family_tokenizers):
    tokenizer = family_tokenizers["mistral"]
    official = tokenizer.apply_chat_template([SYSTEM, *CHINESE], chat_template=OFFICIAL["mistral-v3"], tokenize=False)
    assert SYSTEM["content"] not in official  # Mistral's own template drops it
    for messages in WITH_SYSTEM:
        _, _, error = encode(tokenizer, BUILT_IN["mistral"], messages)
        assert "leaves out the system prompt once the conversation ends with a reply" in error


def test_a_qwen3_tokenizer_with_its_own_template_is_used_and_masked(family_tokenizers):
    tokenizer = family_tokenizers["qwen3"]
    tokenizer.chat_template = OFFICIAL["qwen3-2025-07"]
    try:
        name, template = choose_template("auto", tokenizer, BUILT_IN, model_type="qwen3")
        assert name == "tokenizer"
        check_template(chat_template_renderer(tokenizer, template), name, tokenizer)
        ids, labels, error = encode(tokenizer, template, [SYSTEM, *CHINESE])
        assert error == "" and trained_runs(tokenizer, ids, labels) == TRAINED["qwen3"]
    finally:
        tokenizer.chat_template = None


@pytest.mark.parametrize("model_type, template", [
    ("qwen3", "qwen3"), ("qwen3_moe", "qwen3"), ("mistral", "mistral"),
    ("gemma", "gemma"), ("gemma2", "gemma"), ("gemma3", "gemma"), ("gemma3_text", "gemma"),
])
def test_template_auto_knows_the_new_model_types(tokenizer, model_type, template, monkeypatch):
    monkeypatch.setattr(tokenizer, "chat_template", None)  # a tokenizer without its own (transformers 4.45 loads one)
    assert guess_template(model_type, tokenizer) == template
    assert choose_template("auto", tokenizer, BUILT_IN, model_type=model_type) == (template, BUILT_IN[template])


def test_a_system_prompt_gemma_2_refuses_is_folded_into_the_first_user_turn(family_tokenizers):
    tokenizer = family_tokenizers["gemma"]
    with pytest.raises(Exception, match="System role not supported"):
        tokenizer.apply_chat_template([SYSTEM, *CHINESE], chat_template=OFFICIAL["gemma-2"], tokenize=False)
    ids, _, error = encode(tokenizer, BUILT_IN["gemma"], [SYSTEM, *CHINESE])
    assert error == "" and "<start_of_turn>user\n你是心理咨询师。\n\n我最近睡不好。" in tokenizer.decode(ids)


def test_an_unknown_template_name_still_lists_the_new_ones(tokenizer):
    with pytest.raises(UserError, match="llama3.1, qwen, qwen2, qwen3, qwen3_nothink, mistral, gemma"):
        choose_template("auto", tokenizer, BUILT_IN, model_type="gpt2")


def test_template_auto_tells_llama_3_1_from_llama_3_by_its_special_tokens(family_tokenizers):
    tokenizer = family_tokenizers["llama3.1"]
    assert guess_template("llama", tokenizer) == "llama3.1"  # <|eot_id|> and <|eom_id|>
