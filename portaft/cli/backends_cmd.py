"""portaft backends [--json]: every backend found, whether it can run here, and why not."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("backends", help="list backends and whether each is available here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from portaft.plugins import get_plugins

    plugins = get_plugins()
    rows = plugins.describe_backends()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        state = "available" if row["available"] else f"unavailable: {row['reason']}"
        print(f"{row['name']:<10} priority {row['priority']:>4}  from {row['distribution']:<20} {state}")
    for problem in plugins.problems:
        print(f"warning: {problem}")
    return 0
