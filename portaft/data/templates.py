"""Chat templates: the built-in named ones, choosing one, and rendering with loss masks.

A named template is a Jinja chat template in the same dialect as a tokenizer's
`chat_template`, so one renderer (transformers' own `apply_chat_template`) serves
both, and a model saved by portaft carries the exact template it was trained with.
"""

from __future__ import annotations

from typing import Any

from portaft.errors import UserError
from portaft.hookspecs import hookimpl

# DeepSeek-LLM chat, verbatim from its tokenizer_config.json. Note the generation
# prompt is "Assistant:" with no space: the space belongs to the answer's first token.
DEEPSEEK = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# ChatML as Qwen and many others use it.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@hookimpl
def register_templates(register):
    register("deepseek", DEEPSEEK)
    register("chatml", CHATML)


def choose_template(name: str, tokenizer: Any, templates: dict[str, str]) -> tuple[str, str]:
    """(template name, Jinja source) for the recipe's `template:` value."""
    own = getattr(tokenizer, "chat_template", None)
    if name == "tokenizer" or (name == "auto" and own):
        if not own:
            raise UserError(
                "template: tokenizer, but this tokenizer has no chat_template. "
                f"Name one instead: template: {' | '.join(templates)}."
            )
        return "tokenizer", own
    if name == "auto":
        raise UserError(
            "template: auto, but the tokenizer has no chat_template of its own, so portaft cannot know "
            f"how to format conversations. Set template: to one of {', '.join(templates)}."
        )
    return name, templates[name]


def render(tokenizer: Any, template: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def assistant_spans(tokenizer: Any, template: str, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of every assistant reply.

    A reply's span runs from the end of the generation prompt before it to the end of
    the text the reply adds (its end-of-turn token included), found by rendering the
    conversation up to that reply with and without the reply.
    """
    text = render(tokenizer, template, messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, template, messages[:index], add_generation_prompt=True)
        through = render(tokenizer, template, messages[: index + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise UserError(
                "the chat template renders earlier turns differently once later turns follow, so the "
                "assistant replies cannot be located for loss masking. Use a named template (template: NAME)."
            )
        spans.append((len(before), len(through)))
    return text, spans


def encode(tokenizer: Any, template: str, messages: list[dict], max_length: int) -> dict[str, Any]:
    """input_ids / attention_mask / labels for one conversation.

    Tokens are exactly those of the whole rendered text (what apply_chat_template
    gives); a token is trained when any of its characters belongs to an assistant
    reply, every other token's label is -100.
    """
    text, spans = assistant_spans(tokenizer, template, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [
        token if any(start < end_span and end > start_span for start_span, end_span in spans) else -100
        for token, (start, end) in zip(ids, enc["offset_mapping"])
    ]
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": labels,
        "truncated": truncated,
    }
