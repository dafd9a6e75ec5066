"""Reading one entry of a LLaMA-Factory dataset_info.json into a data source's settings,
and the column and tag names such a mapping may use.

Only json and pathlib are imported: the recipe's schema calls this while it validates,
before anything else of the data step is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                  "system": "system", "tools": "tools"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
KIND_COLUMNS = ("chosen", "rejected", "kto_tag", "images", "videos", "audios")
COLUMNS = {"alpaca": (*ALPACA_COLUMNS, *KIND_COLUMNS), "sharegpt": (*SHAREGPT_COLUMNS, *KIND_COLUMNS)}
TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
        "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}


HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")


def entry_settings(info_path: str, name: str | None) -> dict:
    """{path, formatting, columns, tags, ranking, samples?} of entry `name`; ValueError
    (which the schema reports at the source's YAML path) saying what is wrong."""
    path = Path(info_path)
    if not path.is_file():
        raise ValueError(f"dataset_info: file not found: {info_path} (relative paths start at {Path.cwd()}).")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"dataset_info: {info_path} is not valid JSON ({exc}).") from None
    if not isinstance(info, dict):
        raise ValueError(f"dataset_info: {info_path} must be a JSON object of named entries.")
    if name not in info:
        names = ", ".join(list(info)[:20]) + (", ..." if len(info) > 20 else "")
        raise ValueError(f"name: {name!r} is not an entry of {info_path}. Its entries: {names}.")
    entry = info[name]
    if not isinstance(entry, dict):
        raise ValueError(f"entry {name!r} of {info_path} is not an object.")
    if not entry.get("file_name"):
        where = next((f"{key}: {entry[key]}" for key in HUB_KEYS if entry.get(key)), "no file_name")
        raise ValueError(f"entry {name!r} of {info_path} has {where}; portaft reads local files only. Download the "
                         "data and give its file as `path:`, or add a file_name to the entry.")
    settings = {
        "path": str(path.parent / entry["file_name"]),
        "formatting": entry.get("formatting", "alpaca"),
        "columns": entry.get("columns") or {},
        "tags": entry.get("tags") or {},
        "ranking": bool(entry.get("ranking", False)),
    }
    if entry.get("num_samples"):
        settings["samples"] = int(entry["num_samples"])
    return settings


def mapping_problems(formatting: str, columns: dict, tags: dict) -> list[str]:
    """Unknown column and tag names, said the way the schema reports them."""
    problems = [f"columns.{key}: unknown for formatting {formatting}. Known: {', '.join(COLUMNS[formatting])}."
                for key in columns if key not in COLUMNS[formatting]]
    problems += [f"tags.{key}: unknown. Known: {', '.join(TAGS)}." for key in tags if key not in TAGS]
    if tags and formatting != "sharegpt":
        problems.append("tags: only sharegpt formatting has tags.")
    return problems
