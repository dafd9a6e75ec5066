"""Chat templates: choosing one, rendering with it, and finding what the loss trains.

A named template is a Jinja chat template in the same dialect as a tokenizer's
`chat_template`, so one renderer serves both, the token ids equal
`apply_chat_template` by construction, and a model saved by portaft carries the
exact template it was trained with. The named templates are in `chat_templates.py`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from portaft.errors import UserError
from portaft.plugins.hookspecs import hookimpl

from . import chat_templates

TRAIN_ON = ("assistant", "last_assistant", "all")


@hookimpl
def register_templates(register):
    for name, source in chat_templates.BUILT_IN.items():
        register(name, source)


def choose_template(name: str, tokenizer: Any, templates: dict[str, str], model_type: str | None = None) -> tuple[str, str]:
    """(template name, Jinja source) for the recipe's `template:` value.

    auto = the tokenizer's own template, else the one named after the model's type
    (config.json `model_type`), else an error naming the choices.
    """
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # a tokenizer may carry several named templates; "default" is the chat one
        own = own.get("default")
    if name == "tokenizer" or (name == "auto" and own):
        if not own:
            raise UserError(
                "template: tokenizer, but this tokenizer has no chat_template. "
                f"Name one instead: template: {' | '.join(templates)}."
            )
        return "tokenizer", own
    if name == "auto":
        guess = chat_templates.guess_template(model_type, tokenizer)
        if guess in templates:
            return guess, templates[guess]
        raise UserError(
            f"template: auto, but the tokenizer has no chat_template of its own and the model type "
            f"{model_type!r} does not name one, so portaft cannot know how to format conversations. "
            f"Set template: to one of {', '.join(templates)}."
        )
    return name, templates[name]


def render(tokenizer: Any, template: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


class TemplateError(ValueError):
    """The template cannot be used for loss masking on this conversation."""


def trained_spans(render: Callable[..., str], messages: list[dict], train_on: str,
                  shape: tuple[str, str] | None = None, tools: list | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the loss trains.

    A reply's span runs from the end of the generation prompt before it to the end of
    the text the reply adds (its end-of-turn token included), found by rendering the
    conversation up to that reply with and without the reply. `train_on`: every
    assistant reply, the last one only, or all text.

    `shape` = reply_shape(render) saves the second render: when the text after the
    generation prompt is exactly (gap, reply, ending), that is what rendering the
    conversation up to the reply gives; otherwise (a template that trims or rewrites
    replies) it renders.
    """
    if tools:
        render = functools.partial(render, tools=tools)
    text = render(messages)
    if train_on == "all":
        return text, [(0, len(text))]
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "last_assistant":
        replies = replies[-1:]
    untrained = getattr(messages, "untrained", ())  # replies a per-message flag leaves untrained
    if untrained:
        replies = [i for i in replies if i not in untrained]
    try:
        return text, _spans_by_prefix(render, messages, replies, text, shape)
    except TemplateError:
        if shape is None or len(shape) < 3:
            raise
        return text, _spans_by_markers(text, messages, replies, shape)


def _spans_by_prefix(render: Callable[..., str], messages: list[dict], replies: list[int], text: str,
                     shape: tuple[str, ...] | None) -> list[tuple[int, int]]:
    spans = []
    for index in replies:
        before = render(messages[:index], add_generation_prompt=True)
        if not text.startswith(before):
            raise TemplateError(RERENDERS)
        if index == len(messages) - 1:
            end = len(text)
        elif shape is not None and text.startswith(shape[0] + messages[index]["content"] + shape[1], len(before)):
            end = len(before) + len(shape[0]) + len(messages[index]["content"]) + len(shape[1])
        else:
            through = render(messages[: index + 1])
            if not (through.startswith(before) and text.startswith(through)):
                raise TemplateError(RERENDERS)
            end = len(through)
        spans.append((len(before), end))
    return spans


def _spans_by_markers(text: str, messages: list[dict], replies: list[int], shape: tuple[str, ...]
                      ) -> list[tuple[int, int]]:
    """Replies found in the text itself, for templates that show an earlier turn differently
    once a later user turn follows (Qwen3's official template drops an earlier reply's
    <think> block: the model sees earlier turns that way at inference, so that is what
    is trained). Each assistant message, in order, starts after the template's
    generation prompt and ends with its end-of-turn text; refused unless there are
    exactly as many generation prompts as assistant messages and each reply's text
    lies in its span."""
    prompt, ending = shape[2], shape[1]
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not prompt.strip() or not ending.strip() or text.count(prompt) != len(assistants):
        raise TemplateError(RERENDERS)
    spans, position = {}, 0
    for index in assistants:
        start = text.index(prompt, position) + len(prompt)
        end = text.find(ending, start)
        if end < 0 or messages[index]["content"] not in text[start:end]:
            raise TemplateError(RERENDERS)
        position = end + len(ending)
        spans[index] = (start, position)
    return [spans[i] for i in replies]


RERENDERS = ("the chat template renders earlier turns differently once later turns follow, so the "
             "assistant replies cannot be located for loss masking. Use a named template (template: NAME).")


def reply_shape(render: Callable[..., str]) -> tuple[str, str, str] | None:
    """(gap, ending, prompt): what a template writes between the generation prompt and a
    reply's text, and after it, when the reply ends the conversation, and the generation
    prompt itself; None when the template does not write the reply's text unchanged."""
    probe = "portaft-probe-reply"
    before = render([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    through = render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}])
    position = through.find(probe, len(before))
    if not through.startswith(before) or position < 0:
        return None
    asked = render([{"role": "user", "content": "hi"}])
    prompt = before[len(asked):] if before.startswith(asked) else ""
    return through[len(before):position], through[position + len(probe):], prompt


def reply_ending(render: Callable[..., str]) -> str:
    """What the template writes after a reply's text (e.g. eos, '<|im_end|>\\n').

    Empty means the model would never see where a reply ends and would never stop.
    """
    probe = "portaft-probe-reply"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}]
    text = render(messages)
    position = text.rfind(probe)
    return text[position + len(probe):] if position >= 0 else ""


def check_template(render: Callable[..., str], name: str, tokenizer: Any) -> str:
    """Refuse, once and before any data is read, a template that masking cannot work with:
    one whose replies end with nothing, or that re-renders earlier turns. Returns the
    text the template writes after a reply."""
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "bye"}, {"role": "assistant", "content": "goodbye"}]
    try:
        trained_spans(render, probe, "assistant", reply_shape(render))
    except TemplateError as exc:
        raise UserError(f"template {name!r}: {exc}") from None
    ending = reply_ending(render)
    if not ending.strip():
        raise UserError(
            f"template {name!r} writes nothing after an assistant reply (no eos, no end-of-turn token), "
            "so the model would never learn to stop. Use a template whose replies end with "
            f"{tokenizer.eos_token!r} or an end-of-turn token."
        )
    return ending


def stop_token_ids(tokenizer: Any, template: str) -> list[int]:
    """Token ids that end a reply under this template: eos, plus the template's end-of-turn
    token when that is a single token (e.g. ChatML's <|im_end|> on a tokenizer whose eos differs)."""
    from portaft.compat import chat_template_renderer

    ids = [tokenizer.eos_token_id]
    ending = reply_ending(chat_template_renderer(tokenizer, template)).strip()
    encoded = tokenizer(ending, add_special_tokens=False)["input_ids"] if ending else []
    if len(encoded) == 1 and encoded[0] not in ids:
        ids.append(encoded[0])
    return ids


PROBE_TOOLS = [{"type": "function", "function": {
    "name": "portaft_probe_tool", "description": "a probe",
    "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}]
PROBE_CALL = [{"role": "user", "content": "hi"},
              {"role": "assistant", "content": "", "tool_calls": [
                  {"type": "function", "function": {"name": "portaft_probe_call", "arguments": {"x": 1}}}]},
              {"role": "tool", "content": "portaft-probe-result"},
              {"role": "assistant", "content": "done"}]
PROBE_THOUGHT = [{"role": "user", "content": "hi"},
                 {"role": "assistant", "content": "hello", "reasoning_content": "portaft-probe-thought"}]


def template_abilities(render: Callable[..., str]) -> frozenset:
    """What a template renders beyond text turns, found by rendering probe conversations:
    "tools" when the tool list, a call's name and a tool result all appear, "reasoning"
    when an assistant message's reasoning_content does. Works for any Jinja template."""
    abilities = set()
    try:
        text = render(PROBE_CALL, tools=PROBE_TOOLS)
        if all(word in text for word in ("portaft_probe_tool", "portaft_probe_call", "portaft-probe-result")):
            abilities.add("tools")
    except Exception:  # a template that raises on tool roles has no tool support
        pass
    try:
        if "portaft-probe-thought" in render(PROBE_THOUGHT):
            abilities.add("reasoning")
    except Exception:
        pass
    return frozenset(abilities)
