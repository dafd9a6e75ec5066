"""A data source's own column mapping, with the keys and meanings of a LLaMA-Factory
dataset_info.json entry: `formatting` (alpaca | sharegpt), `columns` and `tags`.

    data:
      - path: data/my_chats.json
        formatting: sharegpt
        columns: {messages: dialog, system: sys_prompt, tools: functions}
        tags: {role_tag: speaker, content_tag: text, user_tag: client, assistant_tag: counsellor}
      - {dataset_info: data/dataset_info.json, name: glaive_toolcall_en_demo}
"""

from __future__ import annotations

from typing import Any

from portaft.plugins.registry import Format

from .dataset_info import ALPACA_COLUMNS, KIND_COLUMNS, SHAREGPT_COLUMNS, TAGS
from .formats import alpaca_to_messages, sharegpt_to_messages
from .kinds import PREFERENCE, kind_error, record_kind
from .messages import PretrainText, text_of


def source_format(source: Any) -> Format | None:
    """The Format a source's mapping describes; None when it has none (format: applies)."""
    formatting = getattr(source, "formatting", None)
    if formatting is None:
        return None
    return mapped_format(formatting, getattr(source, "columns", None) or {}, getattr(source, "tags", None) or {},
                         bool(getattr(source, "ranking", False)))


def mapped_format(formatting: str, columns: dict, tags: dict, ranking: bool = False) -> Format:
    kinds = {canonical: columns[canonical] for canonical in KIND_COLUMNS if canonical in columns}
    if formatting == "sharegpt":
        names = {**SHAREGPT_COLUMNS, **columns}
        tag = {**TAGS, **tags}
        roles = {tag["user_tag"]: "user", tag["assistant_tag"]: "assistant", tag["observation_tag"]: "tool",
                 tag["function_tag"]: "function_call", tag["system_tag"]: "system"}

        def convert(record: dict) -> Any:
            return sharegpt_to_messages(record, names["messages"], tag["role_tag"], tag["content_tag"], roles,
                                        names["system"], names["tools"])
    else:
        names = {**ALPACA_COLUMNS, **columns}
        pretraining = "prompt" in columns and "response" not in columns  # LLaMA-Factory's pt entries

        def convert(record: dict) -> Any:
            if pretraining and record.get(names["response"]) is None and not record.get(names["query"]):
                return PretrainText(text_of(record.get(names["prompt"]), names["prompt"]))
            return alpaca_to_messages(record, names["prompt"], names["query"], names["response"], names["system"],
                                      names["history"], names["tools"])

    def to_messages(record: dict) -> Any:
        if ranking:
            raise kind_error(PREFERENCE, "the source's dataset_info entry says ranking: true")
        record_kind({canonical: record.get(column) for canonical, column in kinds.items()})
        return convert(record)

    return Format(f"{formatting} (mapped)", to_messages, ())
