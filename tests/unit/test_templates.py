"""Chat templates: token ids equal apply_chat_template, the loss trains exactly the replies."""

import pytest

from helpers import use_plugins
from portaft import UserError
from portaft.compat import chat_template_renderer
from portaft.data.chat_templates import BUILT_IN, CHATML, DEEPSEEK, guess_template
from portaft.data.encode import IGNORE, EncodeSettings, Encoder
from portaft.data.formats import Format
from portaft.data.templates import check_template, choose_template, stop_token_ids

MESSAGES = [
    {"role": "system", "content": "你是心理咨询师。"},
    {"role": "user", "content": "我最近睡不好。"},
    {"role": "assistant", "content": "可以说说是从什么时候开始的吗？"},
    {"role": "user", "content": "两周前。"},
    {"role": "assistant", "content": "我们一起找找原因。"},
]

# The markers each built-in template puts around turns, added as special tokens so the
# DeepSeek tokenizer splits them as the model's own tokenizer would.
MARKERS = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
           "<think>", "</think>", "[INST]", "[/INST]", "<start_of_turn>", "<end_of_turn>"]


def conversation_for(name):
    """MESSAGES, less the system prompt for a template that refuses one (mistral: its template
    drops it once the conversation ends with a reply; test_chat_templates_official.py)."""
    return MESSAGES[1:] if name == "mistral" else MESSAGES


@pytest.fixture(scope="module")
def marked_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.add_special_tokens({"additional_special_tokens": MARKERS})
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode(tokenizer, template, messages=MESSAGES, max_length=1000, train_on="assistant", system=None):
    """One conversation through the same encoder training uses."""
    as_record = Format("messages", lambda record: record["messages"], ("messages",))
    encoder = Encoder(tokenizer, as_record, EncodeSettings(template, max_length, train_on, system))
    out = encoder({"messages": [messages]})
    assert out["error"] == [""], out["error"]
    return {key: values[0].tolist() if hasattr(values[0], "tolist") else values[0] for key, values in out.items()}


def reference_ids(tokenizer, template, messages=MESSAGES):
    ids = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def trained_runs(tokenizer, encoded):
    """The text of each run of consecutive trained tokens."""
    runs, current = [], []
    for token, label in zip(encoded["input_ids"], encoded["labels"]):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_named_template_encodes_to_apply_chat_template_ids(marked_tokenizer, name):
    template, messages = BUILT_IN[name], conversation_for(name)
    assert chat_template_renderer(marked_tokenizer, template)(messages) == marked_tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False)
    ids = encode(marked_tokenizer, template, messages)["input_ids"]
    assert ids == reference_ids(marked_tokenizer, template, messages)


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_named_template_trains_both_replies_and_their_end_of_turn(marked_tokenizer, name):
    runs = trained_runs(marked_tokenizer, encode(marked_tokenizer, BUILT_IN[name], conversation_for(name)))
    assert len(runs) == 2
    for run, reply in zip(runs, ("可以说说是从什么时候开始的吗？", "我们一起找找原因。")):
        assert reply in run
        ending = run[run.index(reply) + len(reply):]
        assert ending.strip(), f"{name}: nothing after the reply is trained, so the model would never stop"
        assert "我最近睡不好" not in run and "两周前" not in run and "心理咨询师" not in run


def test_template_tokenizer_equals_apply_chat_template_on_the_tokenizers_own_template(marked_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    marked_tokenizer.save_pretrained(tmp_path)
    own = AutoTokenizer.from_pretrained(tmp_path)
    own.chat_template = BUILT_IN["qwen"]
    name, template = choose_template("tokenizer", own, BUILT_IN)
    assert name == "tokenizer"
    encoded = encode(own, template)
    assert encoded["input_ids"] == reference_ids(own, own.chat_template)


def test_deepseek_trains_only_the_replies_and_their_eos(tokenizer):
    encoded = encode(tokenizer, DEEPSEEK)
    eos = tokenizer.eos_token
    assert trained_runs(tokenizer, encoded) == [f" 可以说说是从什么时候开始的吗？{eos}", f" 我们一起找找原因。{eos}"]
    assert encoded["input_ids"][0] == tokenizer.bos_token_id and encoded["labels"][0] == IGNORE


def test_chatml_trains_the_reply_and_its_end_of_turn(marked_tokenizer):
    runs = trained_runs(marked_tokenizer, encode(marked_tokenizer, CHATML))
    assert runs == ["可以说说是从什么时候开始的吗？<|im_end|>\n", "我们一起找找原因。<|im_end|>\n"]


def test_train_on_last_assistant_trains_only_the_final_reply(tokenizer):
    runs = trained_runs(tokenizer, encode(tokenizer, DEEPSEEK, train_on="last_assistant"))
    assert runs == [f" 我们一起找找原因。{tokenizer.eos_token}"]


def test_train_on_all_trains_every_token_but_the_first(tokenizer):
    encoded = encode(tokenizer, DEEPSEEK, train_on="all")
    assert encoded["labels"][0] == IGNORE
    assert encoded["labels"][1:] == encoded["input_ids"][1:]


def test_system_replaces_or_adds_the_system_prompt(tokenizer):
    replaced = encode(tokenizer, DEEPSEEK, system="你是黄大力的助手。")
    assert tokenizer.decode(replaced["input_ids"]).startswith(f"{tokenizer.bos_token}你是黄大力的助手。\n\nUser: 我最近睡不好")
    added = encode(tokenizer, DEEPSEEK, messages=MESSAGES[1:], system="你是黄大力的助手。")
    assert added["input_ids"] == replaced["input_ids"]


def test_truncation_inside_a_reply_keeps_max_length_tokens(tokenizer):
    full = encode(tokenizer, DEEPSEEK)
    first_reply_end = full["labels"].index(tokenizer.eos_token_id)
    cut = encode(tokenizer, DEEPSEEK, max_length=first_reply_end)
    assert cut["cut"] == 1 and cut["length"] == first_reply_end
    assert cut["input_ids"] == full["input_ids"][:first_reply_end]
    assert cut["labels"] == full["labels"][:first_reply_end]


def test_truncation_inside_a_prompt_drops_the_untrained_tail_and_says_so(tokenizer):
    full = encode(tokenizer, DEEPSEEK)
    first_reply_end = full["labels"].index(tokenizer.eos_token_id) + 1
    cut = encode(tokenizer, DEEPSEEK, max_length=first_reply_end + 3)  # three tokens into the second question
    assert cut["cut"] == 2
    assert cut["input_ids"] == full["input_ids"][:first_reply_end]
    assert cut["trained"] == sum(label != IGNORE for label in full["labels"][:first_reply_end])


def test_template_auto_uses_the_tokenizers_own(tokenizer):
    tokenizer.chat_template = CHATML
    try:
        assert choose_template("auto", tokenizer, {}) == ("tokenizer", CHATML)
    finally:
        tokenizer.chat_template = None


def test_template_auto_guesses_from_the_model_type_or_names_the_choices(tokenizer):
    assert tokenizer.chat_template is None  # the DeepSeek tokenizer package ships none
    assert choose_template("auto", tokenizer, BUILT_IN, model_type="llama") == ("deepseek", DEEPSEEK)
    assert guess_template("qwen2", tokenizer) == "qwen" and guess_template("internlm2", tokenizer) == "internlm2"
    with pytest.raises(UserError, match="model type 'gpt2' does not name one.*deepseek, llama2"):
        choose_template("auto", tokenizer, BUILT_IN, model_type="gpt2")


def test_a_template_that_never_ends_a_reply_is_refused(tokenizer):
    endless = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% endfor %}"
    with pytest.raises(UserError, match="'endless' writes nothing after an assistant reply.*never learn to stop"):
        check_template(chat_template_renderer(tokenizer, endless), "endless", tokenizer)


def test_a_template_that_rewrites_earlier_turns_is_refused_once(tokenizer):
    closing = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{{ eos_token }}"
    with pytest.raises(UserError, match="'closing': the chat template renders earlier turns differently"):
        check_template(chat_template_renderer(tokenizer, closing), "closing", tokenizer)


def test_generation_stops_on_the_templates_end_of_turn_token(marked_tokenizer):
    im_end = marked_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(marked_tokenizer, CHATML) == [marked_tokenizer.eos_token_id, im_end]
    assert stop_token_ids(marked_tokenizer, DEEPSEEK) == [marked_tokenizer.eos_token_id]


def test_a_plugin_can_register_a_template(monkeypatch, recipe_dict, tokenizer):
    import types

    import portaft.data
    from portaft import hookimpl, load_recipe

    plain = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
             "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}")

    @hookimpl
    def register_templates(register):
        register("plain", plain)

    use_plugins(monkeypatch, **{"plain-template": types.SimpleNamespace(register_templates=register_templates)})
    recipe = load_recipe({**recipe_dict, "template": "plain"})
    sample = portaft.data.load(recipe, tokenizer)[0]
    assert tokenizer.decode(sample["input_ids"]).startswith("system: 你是黄大力的智能助手。\nuser: 你是谁？")


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_locating_spans_through_the_rust_encoding_equals_the_offset_mapping(marked_tokenizer, name):
    from portaft.data.encode import ranges_from_encoding, ranges_from_offsets
    from portaft.data.templates import trained_spans

    render = chat_template_renderer(marked_tokenizer, BUILT_IN[name])
    for train_on in ("assistant", "all"):
        text, spans = trained_spans(render, conversation_for(name), train_on)
        encoding = marked_tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
        assert ranges_from_encoding(encoding, spans) == ranges_from_offsets(encoding.offsets, spans)
