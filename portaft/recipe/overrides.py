"""`a.b=c` overrides, typed by the recipe's schema: a word field keeps `no` as the word."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from portaft.errors import UserError

from .schema import Recipe, training_arguments_schema
from .yamlpaths import format_path


def apply_overrides(data: dict, overrides: typing.Sequence[str]) -> dict[tuple, str]:
    """Apply `a.b=c` overrides in place; return {path: override text} for messages."""
    applied: dict[tuple, str] = {}
    for text in overrides:
        key, sep, raw = text.partition("=")
        if not sep or not key:
            raise UserError(f"override `{text}`: write it as key.path=value, e.g. lora.r=16 or train.learning_rate=1e-4.")
        path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
        value = _override_value(path, raw)
        _set_path(data, path, value, text)
        applied[path] = text
    return applied


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def _annotation_at(path: tuple) -> Any:
    """The schema's type annotation at a YAML path, or None where the schema has none."""
    model: Any = Recipe
    for depth, part in enumerate(path):
        if model is None or isinstance(part, int):
            continue
        if model is Recipe and part == "train":
            if depth + 1 != len(path) - 1:
                return None
            field = training_arguments_schema().model_fields.get(path[-1])
            return field.annotation if field is not None else None
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        if depth == len(path) - 1:
            return field.annotation
        args = typing.get_args(annotation := field.annotation) or (annotation,)
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return None


def _union_members(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _is_text(annotation: Any) -> bool:
    """Only a string fits here (str or Optional[str])."""
    return _union_members(annotation) == [str]


def _accepts_text(annotation: Any) -> bool:
    """A string is one of the things that fit (str in a union, a str enum, string literals)."""
    for member in _union_members(annotation):
        if member is str or (isinstance(member, type) and issubclass(member, str)):
            return True
        if typing.get_origin(member) is Literal and all(isinstance(v, str) for v in typing.get_args(member)):
            return True
    return False


def _override_value(path: tuple, raw: str) -> Any:
    """The value of `path=raw`: text where the schema wants text, else YAML, except that
    YAML 1.1's yes/no/on/off stay words where a word fits (train.save_strategy=no)."""
    annotation = _annotation_at(path)
    if annotation is not None and _is_text(annotation):
        return raw
    value = _parse_value(raw)
    if isinstance(value, bool) and raw.lower() not in ("true", "false") and annotation is not None \
            and _accepts_text(annotation):
        return raw
    return value


def _set_path(data: Any, path: tuple, value: Any, text: str) -> None:
    node = data
    for depth, part in enumerate(path[:-1]):
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise UserError(f"override `{text}`: {format_path(path[:depth])} has no item [{part}].")
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise UserError(f"override `{text}`: {format_path(path[:depth])} is not a mapping.")
            node = node.setdefault(part, {})
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise UserError(f"override `{text}`: {format_path(path[:-1])} has no item [{last}].")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise UserError(f"override `{text}`: {format_path(path[:-1])} is not a mapping.")
