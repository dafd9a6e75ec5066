"""The Ollama Modelfile's TEMPLATE renders a conversation exactly as portaft's chat template does.

Each built-in Jinja template is rendered by transformers (what training and `portaft chat`
use); its Go twin by tests/gotemplate.py, a small evaluator of Go's text/template, with
the values Ollama passes (template/template.go: `.Messages` including the system message,
`.System` the system text). What the model reads is the same text in both, counting the
bos llama.cpp adds itself when the tokenizer adds bos.
"""

import pytest
from gotemplate import render as render_go

from portaft.after.export.modelfile import GO_TEMPLATES, WITHOUT_GO_TWIN, built_in_name, go_template, modelfile
from portaft.after.export.vocab import adds_bos
from portaft.data import chat_templates
from portaft.data.templates import render

CONVERSATIONS = [
    [{"role": "user", "content": "你是谁？"}],
    [{"role": "system", "content": "你是黄大力的智能助手。"}, {"role": "user", "content": "Who are you?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "1 + 1 = ?"}],
    [{"role": "user", "content": "第一个问题"}, {"role": "assistant", "content": "第一个回答"},
     {"role": "user", "content": "second question"}],
]


def ollama_values(messages: list[dict]) -> dict:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}


def test_every_built_in_template_has_a_go_twin_or_says_why_not():
    assert set(GO_TEMPLATES) | set(WITHOUT_GO_TWIN) == set(chat_templates.BUILT_IN)
    assert not set(GO_TEMPLATES) & set(WITHOUT_GO_TWIN)


def test_a_template_without_a_go_twin_leaves_the_template_to_ollama(tokenizer, monkeypatch):
    monkeypatch.setitem(WITHOUT_GO_TWIN, "gemma", "a built-in template added before its Go twin")
    text = modelfile("run.gguf", chat_templates.BUILT_IN["gemma"], None, "<end_of_turn>\n", None,
                     tokenizer.eos_token, False, "output/run").text
    assert 'TEMPLATE """' not in text and "Ollama derives TEMPLATE from the GGUF" in text


@pytest.mark.parametrize("name", sorted(GO_TEMPLATES))
def test_the_go_template_renders_each_conversation_as_the_jinja_template_does(tokenizer, name):
    template = chat_templates.BUILT_IN[name]
    add_bos = adds_bos(tokenizer, template)  # what the GGUF tells llama.cpp
    # the templates that write bos first
    assert add_bos == (name in ("deepseek", "llama2", "llama3", "llama3.1", "internlm2", "mistral", "gemma"))
    go = go_template(name, tokenizer.bos_token, tokenizer.eos_token, add_bos)
    for messages in CONVERSATIONS:
        expected = render(tokenizer, template, messages, add_generation_prompt=True)
        seen = (tokenizer.bos_token if add_bos else "") + render_go(go, ollama_values(messages))
        assert seen == expected, (name, messages)


def test_the_modelfile_names_the_gguf_the_template_the_system_prompt_and_the_stops(tokenizer):
    text = modelfile("run.gguf", chat_templates.QWEN25, "你是黄大力的智能助手。", "<|im_end|>\n", None,
                     tokenizer.eos_token, False, "output/run").text
    lines = text.splitlines()
    assert "FROM ./run.gguf" in lines
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template == go_template("qwen", "", tokenizer.eos_token, False)
    assert 'SYSTEM """你是黄大力的智能助手。"""' in lines
    assert [line for line in lines if line.startswith("PARAMETER stop")] == [
        'PARAMETER stop "<|im_end|>"', f'PARAMETER stop "{tokenizer.eos_token}"']
    assert "PARAMETER temperature 0" in lines  # portaft's eval_prompts answer greedily


def test_a_template_that_is_not_built_in_leaves_template_to_ollama(tokenizer):
    own = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert built_in_name(own) is None
    text = modelfile("m.gguf", own, None, "", None, tokenizer.eos_token, False, "out").text
    assert "TEMPLATE" not in "".join(l for l in text.splitlines() if not l.startswith("#"))
    assert f'PARAMETER stop "{tokenizer.eos_token}"' in text
