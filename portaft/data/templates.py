"""Chat templates: choosing one, rendering with it, and finding what the loss trains.

A named template is a Jinja chat template in the same dialect as a tokenizer's
`chat_template`, so one renderer serves both, the token ids equal
`apply_chat_template` by construction, and a model saved by portaft carries the
exact template it was trained with. The named templates are in `chat_templates/`, one
module per model family.
"""

from __future__ import annotations

import functools
import os
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
        spans = _spans_by_prefix(render, messages, replies, text, shape)
    except TemplateError as first:
        if shape is None or len(shape) < 3 or dropped_system(text, messages):
            raise  # a system prompt the template leaves out is never trained around
        try:
            spans = _spans_by_markers(text, messages, replies, shape)
        except TemplateError:
            raise first from None  # the first says more about why
    check_reasoning_rendered(text, messages)
    return text, spans


def _spans_by_prefix(render: Callable[..., str], messages: list[dict], replies: list[int], text: str,
                     shape: tuple[str, ...] | None) -> list[tuple[int, int]]:
    spans = []
    for index in replies:
        before = render(messages[:index], add_generation_prompt=True)
        if not text.startswith(before):
            spans.append(span_in_history(render, messages, index, text, shape))
            continue
        if index == len(messages) - 1:
            end = len(text)
        elif shape is not None and text.startswith(shape[0] + messages[index]["content"] + shape[1], len(before)):
            end = len(before) + len(shape[0]) + len(messages[index]["content"]) + len(shape[1])
        else:
            through = render(messages[: index + 1])
            if not (through.startswith(before) and text.startswith(through)):
                spans.append(span_in_history(render, messages, index, text, shape))
                continue
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


PROBE = "\u2063portaft-reply\u2063"  # text no conversation contains (invisible separators around it)


def span_in_history(render: Callable[..., str], messages: list[dict], index: int, text: str,
                    shape: tuple[str, str] | None) -> tuple[int, int]:
    """The span of a reply that the template renders differently once later turns follow
    (Qwen3 drops the think block of replies before the last user message; with
    enable_thinking=False its generation prompt ends in an empty think block that those
    replies do not have).

    The reply is found by rendering the whole conversation with its text replaced by a
    probe: what comes before the probe and after it must be the conversation's own text.
    The span runs from the end of the generation prompt, or where the generation prompt
    stops matching the conversation when that is exactly where the reply's text starts
    (all earlier turns intact before it), through the reply and the template's end-of-turn
    text. Anything else is a template portaft cannot mask: TemplateError.
    """
    probed = render([*messages[:index], {**messages[index], "content": PROBE}, *messages[index + 1:]])
    position = probed.find(PROBE)
    head, tail = probed[:position], probed[position + len(PROBE):]
    if position < 0 or PROBE in tail or not (text.startswith(head) and text.endswith(tail)) \
            or len(head) + len(tail) > len(text):
        raise TemplateError(dropped_system(text, messages) or RERENDERS)
    earlier = render(messages[:index])
    before = render(messages[:index], add_generation_prompt=True)
    start = len(before) if text.startswith(before) else min(len(os.path.commonprefix([before, text])), len(head))
    ending = shape[1] if shape is not None else reply_ending(render)
    if not text.startswith(before) and start != len(head) and has_reasoning(messages[index]):
        raise TemplateError(f"message {index + 1} has reasoning, but this template's generation prompt closes "
                            "the thinking (qwen3_nothink), so it cannot be trained as the reply. Use qwen3.")
    if not text.startswith(earlier) or start < len(earlier) or not ending or not tail.startswith(ending) \
            or (not text.startswith(before) and start != len(head)):
        raise TemplateError(dropped_system(text, messages) or RERENDERS)
    return start, len(text) - len(tail) + len(ending)


def dropped_system(text: str, messages: list[dict]) -> str:
    """Why a conversation cannot be masked when its template leaves out the system prompt
    (Mistral's templates write it into the last user message only when that message ends
    the conversation, so a training sample would lose it); '' when that is not the case."""
    if messages and messages[0]["role"] == "system" and messages[0]["content"].strip() \
            and messages[0]["content"].strip() not in text:
        return ("the chat template leaves out the system prompt once the conversation ends with a reply "
                "(Mistral's templates put it into the last user message only), so this sample would train "
                "without it. Remove the system prompt, write it into the first user message, or use another "
                "template.")
    return ""


def reasoning_of(message: dict) -> str:
    """A reply's reasoning: its `reasoning_content`, or the "<think>...</think>" part of its
    content (which Qwen3's template reads the same way)."""
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str):
        return reasoning.strip()
    content = message.get("content", "")
    return content.split("</think>")[0].split("<think>")[-1].strip() if "</think>" in content else ""


def has_reasoning(message: dict) -> bool:
    return bool(reasoning_of(message))


def check_reasoning_rendered(text: str, messages: list[dict]) -> None:
    """A reply's reasoning must be in the rendered text: a template without reasoning
    support, or Qwen3's for replies before the last user message, drops it, and the
    reply would train without the reasoning the data holds."""
    for number, message in enumerate(messages, 1):
        if message["role"] != "assistant" or (
                "reasoning_content" not in message and "</think>" not in message["content"]):
            continue  # the common case, checked cheaply: every record passes here
        reasoning = reasoning_of(message)
        if reasoning and reasoning not in text:
            raise TemplateError(
                f"message {number} has reasoning (reasoning_content or <think>), but the chat template "
                "does not render it, so the reply would train without it. Templates that render reasoning: "
                "qwen3, or a tokenizer's own that does; Qwen3's renders it only for replies after the last "
                "user message, so split a multi-turn conversation into one sample per reasoning reply.")


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


def checked_template(name: str, tokenizer: Any, templates: dict[str, str],
                     model_type: str | None = None) -> tuple[str, str, Callable[..., str]]:
    """(name, Jinja source, renderer) of the template a recipe trains with, chosen
    (choose_template) and refused if masking cannot work with it (check_template): the one
    check `run` and `portaft validate` both make, before any data is read."""
    from portaft.compat import chat_template_renderer

    chosen, source = choose_template(name, tokenizer, templates, model_type)
    render = chat_template_renderer(tokenizer, source)
    check_template(render, chosen, tokenizer)
    return chosen, source, render


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
