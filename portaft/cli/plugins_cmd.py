"""portaft plugins [--json]: the plugins found, their hooks, and any that are broken."""

from __future__ import annotations

import json
from dataclasses import asdict


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help="list plugins, their hooks, and broken ones")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from portaft.plugins import get_plugins

    infos = get_plugins().info
    if args.json:
        print(json.dumps([asdict(i) for i in infos], indent=2))
        return 0
    for info in infos:
        where = f"{info.distribution} {info.version}".strip()
        if info.error:
            print(f"{info.name:<12} {where:<22} BROKEN: {info.error}")
        else:
            print(f"{info.name:<12} {where:<22} hooks: {', '.join(info.hooks) or 'none'}")
    return 0
