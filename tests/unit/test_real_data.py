"""Every real file under tests/data/real/ (LLaMA-Factory, EmoLLM, XTuner, ms-swift, OpenAI's
guide; see its SOURCES.md): it trains exactly as its format means (the trained text read
back through portaft.data.load), or it is refused naming its kind. Never trained silently
as something else."""

from pathlib import Path

import pytest

import portaft.data
from portaft import UserError

REAL = Path(__file__).resolve().parents[1] / "data" / "real"

# A Qwen3-like template written for these tests: tools, tool calls, and reasoning_content,
# which (like Qwen3's official template) is shown only after the last user turn.
REASONING_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n"
    "{% endif %}# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools><|im_end|>\n"
    "{% elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{% endif %}"
    "{% set ns = namespace(last_user=-1) %}"
    "{% for m in messages %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}"
    "{% if m.role == 'user' or (m.role == 'system' and not loop.first) %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% elif m.role == 'assistant' %}<|im_start|>assistant\n"
    "{% if loop.index0 > ns.last_user and m.reasoning_content %}<think>\n{{ m.reasoning_content }}\n</think>\n\n"
    "{% endif %}{{ m.content }}"
    "{% for c in m.tool_calls or [] %}\n<tool_call>{\"name\": \"{{ c.function.name }}\", \"arguments\": "
    "{{ c.function.arguments | tojson }}}</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.content }}</tool_response><|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# file: (template, what is trained in its first sample, what must not be) or the kind it is refused as
TRAINS = {
    "emollm/data.json": ("qwen", ["你好，首先感谢你对我敞开心扉。"], ["医生，我最近总是感到很焦虑"]),
    "emollm/ruozhiba_format_emo.jsonl": ("qwen", ["尽管我们相聚的时光有限"], ["天下没有不散的筵席"]),
    "emollm/self_cognition_EmoLLM.json": ("qwen", ["我是EmoLLM"], ["你好<|im_end|>"]),
    "llamafactory/alpaca_en_demo.json": ("qwen", ["Making crepes is an easy"], ["Describe a process"]),
    "llamafactory/identity.json": ("qwen", ["I am {{name}}"], ["<|im_start|>user"]),
    "llamafactory/c4_demo.jsonl": ("qwen", ["think you need all the bells and whistles", "<｜end▁of▁sentence｜>"],
                                   ["<|im_start|>"]),
    "llamafactory/glaive_toolcall_en_demo.json": (
        "qwen", ["Of course! I can help you with that.", '"name": "search_recipes"', "Chicken and Bell Pepper Stir Fry"],
        ["<tool_response>", "I have chicken, bell peppers, and rice."]),
    "llamafactory/reason_tool_use_demo_50.jsonl": (
        REASONING_TEMPLATE, ["<think>\nOkay, the user is asking for schools", "I'm sorry, but the available tools"],
        ["What are the schools near"]),
    "llamafactory/v1_sft_demo.jsonl": ("qwen", ["Hello! I am {{name}}"], ["hi<|im_end|>"]),
    "ms-swift/alpaca.jsonl": ("qwen", ["bbbbb", "33333"], ["11111", "aaaaa", "system123"]),
    "ms-swift/chatml.jsonl": ("qwen", ["22222"], ["11111", "00000"]),
    "ms-swift/conversations.jsonl": ("qwen", ["22222"], ["11111", "00000"]),
    "ms-swift/sharegpt.jsonl": ("qwen", ["22222"], ["11111", "00000"]),
    "ms-swift/swift_multi.jsonl": ("qwen", ["66666"], ["55555", "00000"]),
    "ms-swift/swift_single.jsonl": ("qwen", ["22222"], ["11111", "00000"]),
    "ms-swift/swift_pre.jsonl": ("qwen", ["<｜end▁of▁sentence｜>"], ["<|im_start|>"]),
    "openai/fine_tuning_examples.jsonl": ("qwen", ["Paris, as if everyone doesn't know that already."],
                                          ["Paris<|im_end|>", "What's the capital"]),
    "xtuner/multi_turn_2.json": ("qwen", ["Eat a balanced diet", "Set clear goals"], ["Give three tips"]),
    "xtuner/pretrain_example_data.jsonl": ("qwen", ["hydrated by drinking plenty of water"], ["<|im_start|>"]),
}
REFUSED = {
    "llamafactory/dpo_en_demo.json": "preference (DPO) data",
    "llamafactory/v1_dpo_demo.jsonl": "preference (DPO) data",
    "llamafactory/kto_en_demo.json": "KTO data",
    "llamafactory/mllm_demo.json": "multimodal data",
    "llamafactory/mllm_audio_demo.json": "multimodal data",
    "llamafactory/mllm_video_demo.json": "multimodal data",
    "ms-swift/multi_modal_1.jsonl": "multimodal data",
    "xtuner/openai_sft.jsonl": "a JSON list; each line must be one JSON object",
}


# records whose earlier replies carry reasoning that the Qwen3-style template drops from
# history are refused, never trained without it (issue 26): with skip_bad_samples they are
# counted, and the single-reply ones train
SKIPPING = {"llamafactory/reason_tool_use_demo_50.jsonl"}


def test_every_real_file_is_listed():
    files = {str(p.relative_to(REAL)) for p in REAL.rglob("*.json*")}
    assert files == set(TRAINS) | set(REFUSED)


def _recipe(recipe_dict, path, template):
    recipe = {**recipe_dict, "data": [{"path": str(REAL / path)}], "max_length": 4096}
    if template.startswith("{"):
        return recipe, template
    return {**recipe, "template": template}, None


@pytest.mark.parametrize("path", sorted(TRAINS))
def test_a_real_file_trains_as_its_format_means(recipe_dict, tokenizer, path):
    template, trained_texts, untrained_texts = TRAINS[path]
    recipe, own = _recipe(recipe_dict, path, template)
    recipe["skip_bad_samples"] = path in SKIPPING
    if own is not None:
        tokenizer = _with_template(tokenizer, own)
        recipe["template"] = "tokenizer"
    row = portaft.data.load(recipe, tokenizer)[0]
    text = tokenizer.decode(row["input_ids"])
    trained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
    for expected in trained_texts:
        assert expected in trained, (expected, trained)
    for unexpected in untrained_texts:
        assert unexpected in text or unexpected.startswith("<"), unexpected  # it is in the sample, just not trained
        assert unexpected not in trained, (unexpected, trained)


@pytest.mark.parametrize("path", sorted(REFUSED))
def test_a_real_file_of_a_kind_portaft_does_not_train_is_refused_naming_it(recipe_dict, tokenizer, path):
    recipe, _ = _recipe(recipe_dict, path, "qwen")
    with pytest.raises(UserError) as caught:
        portaft.data.load(recipe, tokenizer)
    message = str(caught.value)
    assert REFUSED[path] in message and f"{REAL / path}:" in message
    assert "Traceback" not in message


def test_reasoning_with_a_template_that_drops_it_is_refused_as_reasoning(recipe_dict, tokenizer):
    recipe, _ = _recipe(recipe_dict, "llamafactory/reason_tool_use_demo_50.jsonl", "qwen")
    with pytest.raises(UserError, match=r"reason_tool_use_demo_50.jsonl:1: reasoning \(reasoning_content\): the "
                                        r"chat template 'qwen' does not render `reasoning_content`"):
        portaft.data.load(recipe, tokenizer)


def test_tool_calls_with_a_template_without_tools_are_refused_as_tool_calling(recipe_dict, tokenizer):
    recipe, _ = _recipe(recipe_dict, "llamafactory/glaive_toolcall_en_demo.json", "deepseek")
    with pytest.raises(UserError, match=r"glaive_toolcall_en_demo.json:2 \(sample 1\): tool calling \(function "
                                        r"calls\): the chat template 'deepseek' does not render tools"):
        portaft.data.load(recipe, tokenizer)


def _with_template(tokenizer, template):
    import copy

    own = copy.copy(tokenizer)
    own.chat_template = template
    return own
