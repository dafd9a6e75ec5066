"""A small evaluator of Go's text/template, the subset Ollama TEMPLATEs use, for tests.

Supported: text; actions with `{{-`/`-}}` trimming; `.Field` (on the current value, so
`.Role` inside a range), `$.Field`, `$var`; `range .X` and `range $i, $m := .X`;
`if` / `else if` / `else` / `end`; the functions eq, ne, and, or, not, gt, lt, le, ge, len,
slice; string
and integer literals; parenthesised calls. Anything else raises, so a template using more
than this fails its test instead of being rendered wrongly. Go semantics followed:
truthiness (empty string, 0, empty list, nil are false), `and`/`or` return an operand.
"""

from __future__ import annotations

import re

ACTION = re.compile(r"{{(-\s)?(.*?)(\s-)?}}", re.S)
TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|-?\d+|:=|,|[$.\w]+)')


def render(template: str, data: dict) -> str:
    nodes, rest = _parse(_lex(template), 0, stop=())
    assert rest == len(_lex(template)), "unbalanced {{ end }}"
    return "".join(_run(nodes, {"$": data, ".": data}))


def _lex(template: str) -> list:
    items, position = [], 0
    for match in ACTION.finditer(template):
        text = template[position:match.start()]
        if match.group(1):
            text = text.rstrip()
        items.append(("text", text))
        items.append(("action", match.group(2).strip(), bool(match.group(3))))
        position = match.end()
    items.append(("text", template[position:]))
    for index, item in enumerate(items):  # `-}}` trims the text after it
        if item[0] == "action" and item[2]:
            items[index + 1] = ("text", items[index + 1][1].lstrip())
    return items


def _parse(items: list, index: int, stop: tuple) -> tuple[list, int]:
    nodes = []
    while index < len(items):
        item = items[index]
        if item[0] == "text":
            nodes.append(("text", item[1]))
            index += 1
            continue
        words = item[1]
        head = words.split()[0] if words else ""
        if head in stop:
            return nodes, index
        if head == "range":
            body, index = _parse(items, index + 1, stop=("end",))
            nodes.append(("range", words[len("range"):].strip(), body))
            index += 1
        elif head == "if":
            branches, index = _parse_if(items, index, words[len("if"):].strip())
            nodes.append(("if", branches))
        else:
            nodes.append(("print", words))
            index += 1
    return nodes, index


def _parse_if(items: list, index: int, condition: str) -> tuple[list, int]:
    branches = []
    while True:
        body, index = _parse(items, index + 1, stop=("else", "end"))
        branches.append((condition, body))
        words = items[index][1]
        if words == "end":
            return branches, index + 1
        condition = words[len("else"):].strip()
        if condition.startswith("if "):
            condition = condition[len("if "):].strip()
        elif condition:
            raise ValueError(f"unsupported: {{{{ {words} }}}}")
        else:
            condition = None  # a plain else


def _run(nodes: list, scope: dict):
    for node in nodes:
        if node[0] == "text":
            yield node[1]
        elif node[0] == "print":
            yield str(_evaluate(node[1], scope))
        elif node[0] == "if":
            for condition, body in node[1]:
                if condition is None or _truth(_evaluate(condition, scope)):
                    yield from _run(body, scope)
                    break
        elif node[0] == "range":
            names, _, source = node[1].rpartition(":=")
            variables = [n.strip() for n in names.split(",")] if names else []
            for position, value in enumerate(_evaluate(source.strip(), scope)):
                inner = dict(scope, **{".": value})
                if len(variables) == 2:
                    inner[variables[0]], inner[variables[1]] = position, value
                elif len(variables) == 1:
                    inner[variables[0]] = value
                yield from _run(node[2], inner)


def _evaluate(expression: str, scope: dict):
    tokens = TOKEN.findall(expression)
    value, rest = _pipeline(tokens, 0, scope)
    if rest != len(tokens):
        raise ValueError(f"unsupported expression: {expression!r}")
    return value


FUNCTIONS = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "gt": lambda a, b: a > b, "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b, "ge": lambda a, b: a >= b, "not": lambda a: not _truth(a), "len": len,
    "slice": lambda items, *bounds: items[slice(*bounds)] if len(bounds) == 2 else items[bounds[0]:],  # x[i:] or x[i:j]
}


def _pipeline(tokens: list, index: int, scope: dict):
    """A command: a function and its arguments, or a single operand."""
    head = tokens[index]
    if head in FUNCTIONS or head in ("and", "or"):
        arguments = []
        index += 1
        while index < len(tokens) and tokens[index] != ")":
            value, index = _operand(tokens, index, scope)
            arguments.append(value)
        if head == "and":
            return next((a for a in arguments if not _truth(a)), arguments[-1]), index
        if head == "or":
            return next((a for a in arguments if _truth(a)), arguments[-1]), index
        return FUNCTIONS[head](*arguments), index
    return _operand(tokens, index, scope)


def _operand(tokens: list, index: int, scope: dict):
    token = tokens[index]
    if token == "(":
        value, index = _pipeline(tokens, index + 1, scope)
        assert tokens[index] == ")"
        return value, index + 1
    if token.startswith('"'):
        return bytes(token[1:-1], "utf-8").decode("unicode_escape"), index + 1
    if re.fullmatch(r"-?\d+", token):
        return int(token), index + 1
    if token.startswith("$."):
        return _field(scope["$"], token[2:]), index + 1
    if token.startswith("$"):
        return scope[token], index + 1
    if token.startswith("."):
        return _field(scope["."], token[1:]) if token != "." else scope["."], index + 1
    raise ValueError(f"unsupported token {token!r}")


def _field(value, path: str):
    for name in path.split("."):
        value = value.get(name) if isinstance(value, dict) else getattr(value, name)  # missingkey=zero: None
    return value


def _truth(value) -> bool:
    return bool(value)
