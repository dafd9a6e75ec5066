"""Data formats: each turns one record into portaft's conversation shape.

The shape is a list of messages, each {"role": "system" | "user" | "assistant",
"content": str}. A converter raises `BadSample` naming the field that is wrong;
the caller adds the file and line. Built-in formats are registered through the
same `register_formats` hook a plugin uses.
"""

from __future__ import annotations

import json
from typing import Any

from portaft.plugins.hookspecs import hookimpl
from portaft.plugins.registry import Format

Messages = list[dict[str, str]]


class BadSample(ValueError):
    """A record that cannot become a conversation; the message names the field."""


def detect_format(record: dict, formats: dict[str, Format]) -> str | None:
    present = {key for key, value in record.items() if value is not None}
    for fmt in formats.values():
        if set(fmt.keys) <= present:
            return fmt.name
    return None


def record_problem(exc: Exception) -> str:
    """A format's failure as the text that follows `file:line: `: a ValueError (BadSample
    or a plugin's) says what is wrong itself; anything else is named by its type."""
    return str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"


def normalise(record: dict, fmt: Format) -> Messages:
    """Messages of one record, checked: known roles, text content, an assistant reply."""
    messages = fmt.to_messages(record)
    if not isinstance(messages, list) or not messages:
        raise BadSample("the conversation is empty. Fix or remove this sample.")
    for message in messages:
        if message.get("role") not in ("system", "user", "assistant"):
            raise BadSample(f"unknown role {message.get('role')!r}; portaft trains on system, user and assistant turns.")
        if not isinstance(message.get("content"), str):
            raise BadSample(f"the {message['role']} message's content is "
                            f"{type(message.get('content')).__name__}, not text.")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadSample("the conversation has no assistant reply, so there is nothing to train on.")
    return messages


# --- the built-in formats -------------------------------------------------------------

def xtuner_to_messages(record: dict) -> Messages:
    """XTuner / EmoLLM: {"conversation": [{"system"?, "input", "output"}, ...]}.

    XTuner's nested variant puts earlier turns in `input`: {"conversation": [...]}.
    They become the history before the reply in `output`; an inner last turn without
    an output supplies the question that `output` answers.
    """
    turns = _list(record.get("conversation"), "conversation")
    messages: Messages = []
    for number, turn in enumerate(turns):
        where = f"conversation[{number}]"
        if not isinstance(turn, dict):
            raise BadSample(f"{where} is not an object with input/output.")
        _add_system(messages, turn.get("system"), f"{where}.system")
        question = turn.get("input")
        if isinstance(question, dict) and "conversation" in question:
            _nested_history(messages, question, f"{where}.input")
        else:
            messages.append({"role": "user", "content": _text(question, f"{where}.input")})
        messages.append({"role": "assistant", "content": _text(turn.get("output"), f"{where}.output")})
    return messages


def _nested_history(messages: Messages, inner: dict, where: str) -> None:
    turns = _list(inner.get("conversation"), f"{where}.conversation")
    for number, turn in enumerate(turns):
        at = f"{where}.conversation[{number}]"
        if not isinstance(turn, dict):
            raise BadSample(f"{at} is not an object with input/output.")
        _add_system(messages, turn.get("system"), f"{at}.system")
        messages.append({"role": "user", "content": _text(turn.get("input"), f"{at}.input")})
        if turn.get("output") not in (None, ""):
            messages.append({"role": "assistant", "content": _text(turn.get("output"), f"{at}.output")})


def _add_system(messages: Messages, system: Any, where: str) -> None:
    """A system prompt once; XTuner data often repeats the same one on inner turns."""
    if system in (None, ""):
        return
    text = _text(system, where)
    if not any(m["role"] == "system" and m["content"] == text for m in messages):
        messages.append({"role": "system", "content": text})


def alpaca_to_messages(record: dict) -> Messages:
    """alpaca: instruction, input, output; optional system and history [[q, a], ...]."""
    messages: Messages = []
    _add_system(messages, record.get("system"), "system")
    for number, pair in enumerate(_list(record.get("history") or [], "history", allow_empty=True)):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise BadSample(f"history[{number}] must be a [question, answer] pair.")
        messages.append({"role": "user", "content": _text(pair[0], f"history[{number}][0]")})
        messages.append({"role": "assistant", "content": _text(pair[1], f"history[{number}][1]")})
    instruction = _text(record.get("instruction"), "instruction")
    extra = record.get("input")
    if extra not in (None, ""):
        instruction = f"{instruction}\n{_text(extra, 'input')}"  # LLaMA-Factory joins them the same way
    messages.append({"role": "user", "content": instruction})
    messages.append({"role": "assistant", "content": _text(record.get("output"), "output")})
    return messages


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "system": "system"}


def sharegpt_to_messages(record: dict) -> Messages:
    """ShareGPT: {"conversations": [{"from": human|gpt|system, "value": ...}], "system"?}."""
    messages: Messages = []
    _add_system(messages, record.get("system"), "system")
    for number, turn in enumerate(_list(record.get("conversations"), "conversations")):
        where = f"conversations[{number}]"
        if not isinstance(turn, dict):
            raise BadSample(f"{where} is not an object with from/value.")
        speaker = turn.get("from", turn.get("role"))
        role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise BadSample(f"{where}.from: unknown role {speaker!r}. Use one of: {', '.join(SHAREGPT_ROLES)}.")
        messages.append({"role": role, "content": _text(turn.get("value", turn.get("content")), f"{where}.value")})
    return messages


OPENAI_ROLES = ("system", "user", "assistant")


def openai_to_messages(record: dict) -> Messages:
    """OpenAI chat: {"messages": [{"role": system|user|assistant, "content": ...}]}."""
    messages: Messages = []
    for number, message in enumerate(_list(record.get("messages"), "messages")):
        where = f"messages[{number}]"
        if not isinstance(message, dict):
            raise BadSample(f"{where} is not an object with role/content.")
        role = message.get("role")
        if role not in OPENAI_ROLES:
            raise BadSample(f"{where}.role: unknown role {role!r}. Use one of: {', '.join(OPENAI_ROLES)}.")
        messages.append({"role": role, "content": _content(message.get("content"), f"{where}.content")})
    return messages


def _content(value: Any, where: str) -> str:
    """OpenAI content: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(value, list):
        parts = []
        for number, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise BadSample(f"{where}[{number}] is not a text part; portaft trains on text only.")
            parts.append(_text(part.get("text"), f"{where}[{number}].text"))
        return "".join(parts)
    return _text(value, where)


def _list(value: Any, where: str, allow_empty: bool = False) -> list:
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:  # CSV and some parquet files store nested lists as JSON text
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise BadSample(f"{where} holds text that is not valid JSON ({exc}).") from None
    if not isinstance(value, list) or (not value and not allow_empty):
        raise BadSample(f"`{where}` must be a non-empty list. Fix or remove this sample.")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        kind = "missing" if value is None else f"of type {type(value).__name__}, not text"
        raise BadSample(f"{where} is {kind}. Every turn needs text here.")
    return value


@hookimpl
def register_formats(register):
    register("xtuner", xtuner_to_messages, keys=("conversation",))
    register("sharegpt", sharegpt_to_messages, keys=("conversations",))
    register("openai", openai_to_messages, keys=("messages",))
    register("alpaca", alpaca_to_messages, keys=("instruction", "output"))
