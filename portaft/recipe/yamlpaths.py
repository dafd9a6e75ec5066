"""Read YAML while remembering the line of every key, for error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from portaft.errors import UserError

Path_ = tuple[str | int, ...]


def load_yaml_with_lines(path: Path) -> tuple[Any, dict[Path_, int]]:
    """Return (data, {yaml_path: 1-based line}) for the YAML file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: recipe file not found. Check the path (relative paths start at the current folder).") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the recipe ({exc.strerror}).") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        context, opened = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and opened:  # e.g. an unclosed [ ... : name the line that opened it
            problem += f" ({context.removeprefix('while ')} that starts at line {opened.line + 1})"
        raise UserError(f"{where}: not valid YAML: {problem}. Fix the syntax there.") from None
    lines: dict[Path_, int] = {}
    twice: list[str] = []
    if node is not None:
        _collect_lines(node, (), lines, twice)
    if twice:
        raise UserError("\n".join(f"{path}:{line}" for line in twice))
    return data, lines


def _collect_lines(node: yaml.Node, prefix: Path_, lines: dict[Path_, int], twice: list[str]) -> None:
    """Each key's line; a key given twice in one mapping (YAML would keep the last
    silently) goes to `twice` as `LINE: what and what to do`."""
    lines[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in seen:
                twice.append(f"{line}: {format_path(prefix + (key,))} is given twice (lines {seen[key]} and {line}); "
                             "YAML would keep only the second. Remove one, or merge them.")
            seen[key] = line
            lines[prefix + (key,)] = line
            _collect_lines(value_node, prefix + (key,), lines, twice)
            lines[prefix + (key,)] = line
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_lines(item, prefix + (index,), lines, twice)


def format_path(path: Path_) -> str:
    """('data', 0, 'path') -> 'data[0].path', the way the user reads their YAML."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def leaf_paths(node: Any, path: Path_ = ()) -> dict[Path_, Any]:
    """{yaml path: value} of every leaf under `node`. Mappings, and lists holding mappings
    or lists, are walked; a list of plain values (target_modules) is one leaf."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list) and any(isinstance(v, (dict, list)) for v in node):
        items = enumerate(node)
    else:
        return {path: node} if path else {}
    leaves: dict[Path_, Any] = {}
    for key, value in items:
        leaves.update(leaf_paths(value, path + (key,)))
    return leaves


def nearest_line(lines: dict[Path_, int], path: Path_) -> int | None:
    """The line of `path`, or of its closest ancestor that the file contains."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None
