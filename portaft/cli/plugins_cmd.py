"""portaft plugins [--json]: the plugins found, their hooks, and any that are broken."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help="list plugins, their hooks, and broken ones")
    p.add_argument("--json", action="store_true", help="machine-readable output (refused registrations go to stderr)")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from portaft.plugins import get_plugins

    plugins = get_plugins()
    plugins.backends, plugins.templates, plugins.formats  # noqa: B018 (calls every hook once: a raising one is broken)
    if args.json:
        print(json.dumps([asdict(i) for i in plugins.info], indent=2))
        for problem in plugins.problems:
            print(f"warning: {problem}", file=sys.stderr)
        return 0
    for info in plugins.info:
        where = f"{info.distribution} {info.version}".strip()
        if info.error:
            print(f"{info.name:<12} {where:<22} BROKEN: {info.error}")
        else:
            print(f"{info.name:<12} {where:<22} hooks: {', '.join(info.hooks) or 'none'}")
    for problem in plugins.problems:
        print(f"warning: {problem}")
    return 0
