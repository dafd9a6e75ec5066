"""Reading data sources and normalising them to one conversation shape.

Internal shape: a list of messages, each {"role": system|user|assistant, "content": str}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from portaft.errors import UserError


def read_source(path: str) -> Any:
    """A JSON array or JSONL file as a `datasets.Dataset`."""
    from datasets import load_dataset

    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise UserError(f"{path}: portaft reads .json and .jsonl files here; convert this file or rename it.")
    try:
        return load_dataset("json", data_files=path, split="train")
    except Exception as exc:  # datasets wraps JSON errors in several types
        cause = exc.__cause__ or exc
        raise UserError(f"{path}: cannot be read as JSON/JSONL: {cause}. Fix the file (one object per line for .jsonl).") from None


def detect_format(record: dict, path: str) -> str:
    if "conversation" in record:
        return "xtuner"
    raise UserError(
        f"{path}: cannot tell the data format from the first record's keys ({', '.join(record) or 'none'}). "
        "Supported here: xtuner (a `conversation` list of system/input/output turns). Set `format:` or fix the data."
    )


def xtuner_to_messages(record: dict, where: str) -> list[dict]:
    """XTuner / EmoLLM: {"conversation": [{"system"?, "input", "output"}, ...]}."""
    turns = record.get("conversation")
    if not isinstance(turns, list) or not turns:
        raise UserError(f"{where}: `conversation` must be a non-empty list of turns. Fix or remove this sample.")
    messages: list[dict] = []
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise UserError(f"{where}: conversation[{number}] is not an object with input/output.")
        system = turn.get("system")
        if system:
            messages.append({"role": "system", "content": _text(system, f"{where}: conversation[{number}].system")})
        messages.append({"role": "user", "content": _text(turn.get("input"), f"{where}: conversation[{number}].input")})
        messages.append({"role": "assistant", "content": _text(turn.get("output"), f"{where}: conversation[{number}].output")})
    return messages


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        kind = "missing" if value is None else f"of type {type(value).__name__}, not text"
        raise UserError(f"{where} is {kind}. Every turn needs text here.")
    return value


FORMATS = {"xtuner": xtuner_to_messages}
