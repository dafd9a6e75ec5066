"""The pieces the built-in formats share: portaft's conversation types and readers of
fields (text, lists, tool calls, tools, per-message loss flags, content parts)."""

from __future__ import annotations

import json
from typing import Any

from .kinds import BadSample, media_part


class Conversation(list):
    """Messages, plus the record's `tools` (OpenAI shape, for apply_chat_template(tools=)),
    the indices of replies that are not trained, and what the template must render
    ("tools", "reasoning"); `normalise` fills the last two."""

    tools: list | None = None
    untrained: frozenset = frozenset()
    needs: frozenset = frozenset()


class PretrainText(str):
    """A record that is pretraining text: no template, loss on every token."""


def as_list(value: Any, where: str, allow_empty: bool = False) -> list:
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:  # CSV and some parquet files store nested lists as JSON text
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise BadSample(f"{where} holds text that is not valid JSON ({exc}).") from None
    if not isinstance(value, list) or (not value and not allow_empty):
        raise BadSample(f"`{where}` must be a non-empty list. Fix or remove this sample.",
                        reason="empty conversation" if value in ([], None) else "bad field")
    return value


def text_of(value: Any, where: str) -> str:
    if not isinstance(value, str):
        kind = "missing" if value is None else f"of type {type(value).__name__}, not text"
        raise BadSample(f"{where} is {kind}. Every turn needs text here.",
                        reason="missing text" if value is None else "text of another type")
    return value


def add_system(messages: list, system: Any, where: str) -> None:
    """A system prompt once; XTuner data often repeats the same one on inner turns."""
    if system in (None, ""):
        return
    text = text_of(system, where)
    if not any(m["role"] == "system" and m["content"] == text for m in messages):
        messages.append({"role": "system", "content": text})


def _json(value: Any, where: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise BadSample(f"{where} is text that is not valid JSON ({exc.msg}).",
                            reason="tool call not JSON") from None
    return value


def call_of(value: Any, where: str) -> dict:
    """One tool call in OpenAI's shape with its arguments as an object (what chat
    templates expect), from {"name", "arguments"}, {"function": {...}} or their JSON text."""
    call = _json(value, where)
    function = call.get("function", call) if isinstance(call, dict) else None
    if not (isinstance(function, dict) and isinstance(function.get("name"), str)):
        raise BadSample(f"{where} is not a tool call with a name and arguments.", reason="bad tool call")
    arguments = _json(function.get("arguments", function.get("parameters", {})), f"{where}.arguments")
    out = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
    if isinstance(call, dict) and call.get("id") is not None:
        out["id"] = call["id"]
    return out


def tool_calls(message: dict, where: str) -> list[dict]:
    """An OpenAI message's `tool_calls`, and the older single `function_call`."""
    calls = [call_of(c, f"{where}.tool_calls[{i}]") for i, c in enumerate(message.get("tool_calls") or [])]
    if message.get("function_call"):
        calls.append(call_of(message["function_call"], f"{where}.function_call"))
    return calls


def tools_of(value: Any, where: str) -> list | None:
    """A record's tools as a list of OpenAI tool schemas; a bare function schema
    (LLaMA-Factory's glaive files) is wrapped as {"type": "function", "function": ...}."""
    if value in (None, "", []):
        return None
    tools = _json(value, where)
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise BadSample(f"{where} must be a list of tool (function) schemas.", reason="bad tools")
    return [t if "function" in t else {"type": "function", "function": t} for t in tools] or None


# OpenAI, ms-swift, LLaMA-Factory, ms-swift, axolotl (message_field_training), portaft's own
LOSS_KEYS = ("weight", "loss", "loss_weight", "loss_scale", "training", "train")


def loss_flag(message: dict, role: str, where: str) -> bool | None:
    """Whether a message is trained, from its per-message flag: None when it has none.
    portaft trains a reply whole or not at all, and only assistant replies."""
    for key in LOSS_KEYS:
        value = message.get(key)
        if value is None:
            continue
        trained = bool(value)
        if not isinstance(value, bool) and value not in (0, 1):
            raise BadSample(f"{where}.{key} is {value!r}; portaft trains a reply fully (1) or not at all (0).",
                            reason="partial loss weight")
        if trained and role != "assistant":
            raise BadSample(f"{where}.{key} asks to train a {role} message; portaft trains assistant replies "
                            "(train_on: all trains every token).", reason="loss on a non-assistant message")
        return trained
    return None


def message_parts(value: Any, where: str) -> tuple[str, str, list[dict]]:
    """(text, reasoning, tool calls) of a message's content: a string, or a list of parts:
    {"type": "text", "text"|"value"}, LLaMA-Factory's {"type": "reasoning" | "tool_call",
    "value"}, Anthropic's {"type": "thinking" | "tool_use"}. Media parts are a kind error."""
    if not isinstance(value, list):
        return text_of(value, where), "", []
    texts, thoughts, calls = [], [], []
    for number, part in enumerate(value):
        at = f"{where}[{number}]"
        media_part(part, at)
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(text_of(part.get("text", part.get("value")), f"{at}.text"))
        elif kind in ("reasoning", "thinking"):
            thoughts.append(text_of(part.get("value", part.get("thinking", part.get("text"))), f"{at}.value"))
        elif kind == "tool_call":
            calls.append(call_of(part.get("value"), f"{at}.value"))
        elif kind == "tool_use":
            calls.append(call_of({"name": part.get("name"), "arguments": part.get("input", {}), "id": part.get("id")},
                                 at))
        else:
            raise BadSample(f"{at} is not a text part; portaft trains on text only.")
    return "".join(texts), "".join(thoughts), calls
