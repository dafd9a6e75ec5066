"""Data formats: each turns one record into portaft's conversation shape.

The shape is a list of messages in OpenAI's form: {"role": "system" | "user" |
"assistant" | "tool", "content": str}, an assistant message may carry "tool_calls"
([{"type": "function", "function": {"name", "arguments": {...}}}]) and
"reasoning_content", and "train": False marks a reply that is not trained (OpenAI's
`weight: 0`, ms-swift's `loss: false`, LLaMA-Factory's `loss_weight: 0`). A
`Conversation` also carries the record's `tools`. Pretraining text comes back as
`PretrainText`. A converter raises `BadSample` naming the field that is wrong; the
caller adds the file and line. Built-in formats are registered through the same
`register_formats` hook a plugin uses; their helpers are in `messages.py`.
"""

from __future__ import annotations

from portaft.plugins.hookspecs import hookimpl
from portaft.plugins.registry import Format

from .kinds import PLACEHOLDER, BadSample, KindError, check_placeholders, record_kind
from .messages import (Conversation, PretrainText, add_system, as_list, call_of, loss_flag, message_parts,
                       text_of, tool_calls, tools_of)

__all__ = ["BadSample", "Conversation", "Format", "KindError", "PretrainText", "detect_format", "normalise",
           "record_problem", "record_reason"]

ROLES = frozenset(("system", "user", "assistant", "tool"))


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


def record_reason(exc: Exception) -> str:
    """The few words that group a failure in the count of skipped records."""
    return getattr(exc, "reason", None) or "bad record"


def normalise(record: dict, fmt: Format) -> Conversation | PretrainText:
    """The record's conversation, checked: no kind portaft cannot train, known roles,
    text content, an assistant reply. `needs` says what the template must render."""
    record_kind(record)
    result = fmt.to_messages(record)
    if isinstance(result, PretrainText):
        check_placeholders(result, "the text")
        return result
    if not isinstance(result, list) or not result:
        raise BadSample("the conversation is empty. Fix or remove this sample.", reason="empty conversation")
    conversation = result if isinstance(result, Conversation) else Conversation(result)
    untrained, needs, contents = [], set(), []
    for index, message in enumerate(conversation):
        role = message.get("role")
        if role not in ROLES:
            raise BadSample(f"unknown role {role!r}; portaft trains on system, user, assistant and tool turns.",
                            reason="unknown role")
        content = message.get("content")
        if not isinstance(content, str):
            raise BadSample(f"the {role} message's content is {type(content).__name__}, not text.",
                            reason="content not text")
        contents.append(content)
        if role == "tool":
            needs.add("tools")
        if len(message) > 2:  # more than role and content: a flag, tool calls, reasoning
            if message.get("train", True) is False:
                untrained.append(index)
            if message.get("tool_calls"):
                needs.add("tools")
            if message.get("reasoning_content"):
                needs.add("reasoning")
    joined = "\x00".join(contents)
    if "<" in joined and PLACEHOLDER.search(joined):  # one search per record; then say which message
        for message in conversation:
            check_placeholders(message["content"], f"the {message['role']} message")
    if conversation.tools:
        needs.add("tools")
    if not any(m["role"] == "assistant" for m in conversation):
        raise BadSample("the conversation has no assistant reply, so there is nothing to train on.",
                        reason="no assistant reply")
    if untrained:  # the class says none
        conversation.untrained = frozenset(untrained)
    if needs:
        conversation.needs = frozenset(needs)
    return conversation


# --- the built-in formats -------------------------------------------------------------

def xtuner_to_messages(record: dict) -> Conversation | PretrainText:
    """XTuner / EmoLLM: {"conversation": [{"system"?, "input", "output"}, ...]}.

    XTuner's nested variant puts earlier turns in `input`: {"conversation": [...]}.
    They become the history before the reply in `output`; an inner last turn without
    an output supplies the question that `output` answers. XTuner's incremental
    pretraining convention, one turn with an empty input and no system, is pretraining
    text. ms-swift's {"conversation": [{"human", "assistant"}]} is read the same way.
    """
    turns = as_list(record.get("conversation"), "conversation")
    if len(turns) == 1 and isinstance(turns[0], dict) and turns[0].get("input") in ("", None) \
            and "human" not in turns[0] and turns[0].get("system") in (None, "") and not record.get("system"):
        return PretrainText(text_of(turns[0].get("output"), "conversation[0].output"))
    messages = Conversation()
    add_system(messages, record.get("system"), "system")
    for number, turn in enumerate(turns):
        where = f"conversation[{number}]"
        if not isinstance(turn, dict):
            raise BadSample(f"{where} is not an object with input/output.")
        if "human" in turn and "input" not in turn:  # ms-swift's sharegpt-like turns
            turn = {"input": turn.get("human"), "output": turn.get("assistant")}
        add_system(messages, turn.get("system"), f"{where}.system")
        question = turn.get("input")
        if isinstance(question, dict) and "conversation" in question:
            _nested_history(messages, question, f"{where}.input")
        else:
            messages.append({"role": "user", "content": text_of(question, f"{where}.input")})
        messages.append({"role": "assistant", "content": text_of(turn.get("output"), f"{where}.output")})
    return messages


def _nested_history(messages: Conversation, inner: dict, where: str) -> None:
    turns = as_list(inner.get("conversation"), f"{where}.conversation")
    for number, turn in enumerate(turns):
        at = f"{where}.conversation[{number}]"
        if not isinstance(turn, dict):
            raise BadSample(f"{at} is not an object with input/output.")
        add_system(messages, turn.get("system"), f"{at}.system")
        messages.append({"role": "user", "content": text_of(turn.get("input"), f"{at}.input")})
        if turn.get("output") not in (None, ""):
            messages.append({"role": "assistant", "content": text_of(turn.get("output"), f"{at}.output")})


def alpaca_to_messages(record: dict, prompt: str = "instruction", query: str = "input", response: str = "output",
                       system: str = "system", history: str = "history", tools: str = "tools") -> Conversation:
    """alpaca: instruction, input, output; optional system, history [[q, a], ...] and tools
    (LLaMA-Factory's). The keyword names are the columns, for a source's column mapping."""
    messages = Conversation()
    messages.tools = tools_of(record.get(tools), tools)
    add_system(messages, record.get(system), system)
    for number, pair in enumerate(as_list(record.get(history) or [], history, allow_empty=True)):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise BadSample(f"{history}[{number}] must be a [question, answer] pair.")
        messages.append({"role": "user", "content": text_of(pair[0], f"{history}[{number}][0]")})
        messages.append({"role": "assistant", "content": text_of(pair[1], f"{history}[{number}][1]")})
    instruction = text_of(record.get(prompt), prompt)
    extra = record.get(query)
    if extra not in (None, ""):
        instruction = f"{instruction}\n{text_of(extra, query)}"  # LLaMA-Factory joins them the same way
    messages.append({"role": "user", "content": instruction})
    messages.append({"role": "assistant", "content": text_of(record.get(response), response)})
    return messages


SWIFT_QUERY = ("query", "prompt", "question", "problem")  # the names ms-swift reads as the query


def swift_to_messages(record: dict) -> Conversation | PretrainText:
    """ms-swift's query/response: {"system"?, "query", "response", "history"?: [[q, a]]}
    (the query may be named prompt, question or problem, as ms-swift allows); a record
    with a response and no query, history or system is pretraining text (ms-swift's
    pretraining shape)."""
    query = next((name for name in SWIFT_QUERY if record.get(name) is not None), None)
    if query is None and not record.get("history") and record.get("system") in (None, ""):
        return PretrainText(text_of(record.get("response"), "response"))
    return alpaca_to_messages(record, prompt=query or "query", query="", response="response")


def text_to_messages(record: dict) -> PretrainText:
    """Pretraining text: {"text": ...} (LLaMA-Factory's pretraining sets, c4, wiki)."""
    return PretrainText(text_of(record.get("text"), "text"))


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "system": "system", "function_call": "function_call",
                  "observation": "tool", "tool": "tool"}


def sharegpt_to_messages(record: dict, messages_column: str = "conversations", role_tag: str = "from",
                         content_tag: str = "value", roles: dict[str, str] | None = None,
                         system: str = "system", tools: str = "tools") -> Conversation:
    """ShareGPT: {"conversations": [{"from": human|gpt|system|function_call|observation,
    "value": ...}], "system"?, "tools"?}. A function_call turn is an assistant tool call
    (its value {"name", "arguments"}, or a list of them); an observation is a tool
    result. The keyword names are the columns and tags, for a source's column mapping."""
    roles = roles or SHAREGPT_ROLES
    messages = Conversation()
    messages.tools = tools_of(record.get(tools), tools)
    add_system(messages, record.get(system), system)
    for number, turn in enumerate(as_list(record.get(messages_column), messages_column)):
        where = f"{messages_column}[{number}]"
        if not isinstance(turn, dict):
            raise BadSample(f"{where} is not an object with {role_tag}/{content_tag}.")
        speaker = turn.get(role_tag, turn.get("role"))
        role = roles.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise BadSample(f"{where}.{role_tag}: unknown role {speaker!r}. Use one of: {', '.join(roles)}.",
                            reason="unknown role")
        value = turn.get(content_tag, turn.get("content"))
        if role == "function_call":
            calls = value if isinstance(value, list) else [value]
            messages.append({"role": "assistant", "content": "",
                             "tool_calls": [call_of(c, f"{where}.{content_tag}") for c in calls]})
        else:
            messages.append({"role": role, "content": text_of(value, f"{where}.{content_tag}")})
        if len(turn) > 2 and loss_flag(turn, messages[-1]["role"], where) is False:  # a per-turn weight
            messages[-1]["train"] = False
    return messages


OPENAI_ROLES = frozenset(("system", "user", "assistant", "tool"))
ROLE_ALIASES = {"developer": "system", "function": "tool", "tool_response": "tool", "observation": "tool"}


def openai_to_messages(record: dict) -> Conversation | PretrainText:
    """OpenAI chat (and ms-swift's and LLaMA-Factory's messages): {"messages": [{"role",
    "content", "tool_calls"?, "reasoning_content"?, "weight"? | "loss"? | "loss_weight"?}],
    "tools"?}. ms-swift's role tool_call is an assistant tool call; XTuner's single
    `pretrain` message is pretraining text."""
    items = as_list(record.get("messages"), "messages")
    if len(items) == 1 and isinstance(items[0], dict) and items[0].get("role") == "pretrain":
        return PretrainText(text_of(items[0].get("content"), "messages[0].content"))
    messages = Conversation()
    messages.tools = tools_of(record.get("tools", record.get("functions")), "tools")
    for number, message in enumerate(items):
        where = f"messages[{number}]"
        if not isinstance(message, dict):
            raise BadSample(f"{where} is not an object with role/content.")
        role = ROLE_ALIASES.get(message.get("role"), message.get("role"))
        if role == "tool_call":  # ms-swift: consecutive tool_call messages are one assistant turn
            call = call_of(message.get("content"), f"{where}.content")
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls") \
                    and not messages[-1]["content"]:
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
                if loss_flag(message, "assistant", where) is False:  # the first call's flag counts, as in ms-swift
                    messages[-1]["train"] = False
            continue
        if role not in OPENAI_ROLES:
            raise BadSample(f"{where}.role: unknown role {role!r}. Use one of: {', '.join(OPENAI_ROLES)}.",
                            reason="unknown role")
        calls = tool_calls(message, where)
        content = message.get("content")
        if content is None and calls:
            text, reasoning, more = "", "", []
        else:
            text, reasoning, more = message_parts(content, f"{where}.content")
        out = {"role": role, "content": text}
        if calls or more:
            out["tool_calls"] = calls + more
        reasoning = message.get("reasoning_content") or reasoning
        if reasoning:
            out["reasoning_content"] = text_of(reasoning, f"{where}.reasoning_content")
        for key in ("name", "tool_call_id"):
            if message.get(key) is not None:
                out[key] = message[key]
        if loss_flag(message, role, where) is False:
            out["train"] = False
        messages.append(out)
    return messages


@hookimpl
def register_formats(register):
    register("xtuner", xtuner_to_messages, keys=("conversation",))
    register("sharegpt", sharegpt_to_messages, keys=("conversations",))
    register("openai", openai_to_messages, keys=("messages",))
    register("alpaca", alpaca_to_messages, keys=("instruction", "output"))
    register("swift", swift_to_messages, keys=("response",))
    register("text", text_to_messages, keys=("text",))
