"""Chat-template rendering and loss masking."""

import pytest

from portaft import UserError
from portaft.data.templates import CHATML, DEEPSEEK, choose_template, encode

MESSAGES = [
    {"role": "system", "content": "你是心理咨询师。"},
    {"role": "user", "content": "我最近睡不好。"},
    {"role": "assistant", "content": "可以说说是从什么时候开始的吗？"},
    {"role": "user", "content": "两周前。"},
    {"role": "assistant", "content": "我们一起找找原因。"},
]


@pytest.mark.parametrize("template", [DEEPSEEK, CHATML])
def test_token_ids_equal_apply_chat_template(tokenizer, template):
    ours = encode(tokenizer, template, MESSAGES, max_length=1000)["input_ids"]
    theirs = tokenizer.apply_chat_template(MESSAGES, chat_template=template, tokenize=True)
    theirs = theirs["input_ids"] if hasattr(theirs, "keys") else theirs
    assert ours == list(theirs)


def trained_text(tokenizer, encoded):
    """The text of each run of consecutive trained tokens."""
    runs, current = [], []
    for token, label in zip(encoded["input_ids"], encoded["labels"]):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_deepseek_trains_only_the_replies_and_their_eos(tokenizer):
    encoded = encode(tokenizer, DEEPSEEK, MESSAGES, max_length=1000)
    eos = tokenizer.eos_token
    assert trained_text(tokenizer, encoded) == [f" 可以说说是从什么时候开始的吗？{eos}", f" 我们一起找找原因。{eos}"]
    assert encoded["input_ids"][0] == tokenizer.bos_token_id and encoded["labels"][0] == -100


def test_chatml_trains_the_reply_and_its_end_of_turn(tokenizer):
    encoded = encode(tokenizer, CHATML, MESSAGES, max_length=1000)
    runs = trained_text(tokenizer, encoded)
    assert runs == ["可以说说是从什么时候开始的吗？<|im_end|>\n", "我们一起找找原因。<|im_end|>\n"]


def test_truncation_cuts_to_max_length_and_says_so(tokenizer):
    full = encode(tokenizer, DEEPSEEK, MESSAGES, max_length=1000)
    short = encode(tokenizer, DEEPSEEK, MESSAGES, max_length=10)
    assert short["truncated"] and not full["truncated"]
    assert short["input_ids"] == full["input_ids"][:10] and short["labels"] == full["labels"][:10]
    assert len(short["attention_mask"]) == 10


def test_template_auto_needs_a_tokenizer_template_or_a_name(tokenizer):
    assert tokenizer.chat_template is None  # the DeepSeek tokenizer package ships none
    with pytest.raises(UserError, match="no chat_template of its own.*deepseek, chatml"):
        choose_template("auto", tokenizer, {"deepseek": DEEPSEEK, "chatml": CHATML})
    assert choose_template("deepseek", tokenizer, {"deepseek": DEEPSEEK}) == ("deepseek", DEEPSEEK)


def test_template_auto_uses_the_tokenizers_own(tokenizer):
    tokenizer.chat_template = CHATML
    try:
        assert choose_template("auto", tokenizer, {}) == ("tokenizer", CHATML)
    finally:
        tokenizer.chat_template = None


def test_a_plugin_can_register_a_template(monkeypatch, recipe_dict, tokenizer):
    import types

    import portaft.data
    from portaft import hookimpl, load_recipe
    from portaft.plugins import Plugins

    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"

    @hookimpl
    def register_templates(register):
        register("plain", plain)

    plugins = Plugins()
    plugins.register(types.SimpleNamespace(register_templates=register_templates), name="plain-template")
    monkeypatch.setattr("portaft.plugins._current", plugins)
    recipe = load_recipe({**recipe_dict, "template": "plain"})
    sample = portaft.data.load(recipe, tokenizer)[0]
    assert tokenizer.decode(sample["input_ids"]).startswith("system: 你是黄大力的智能助手。\nuser: 你是谁？")
