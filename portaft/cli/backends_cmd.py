"""portaft backends [--json]: every backend found, whether it can run here, and why not."""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("backends", help="list backends and whether each is available here")
    p.add_argument("--json", action="store_true", help="machine-readable output (warnings go to stderr)")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from portaft.plugins import get_plugins

    plugins = get_plugins()
    rows = plugins.describe_backends()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            state = "available" if row["available"] else f"unavailable: {row['reason']}"
            print(f"{row['name']:<10} priority {row['priority']:>4}  from {row['distribution']:<20} {state}")
    print_warnings(plugins, file=sys.stderr if args.json else sys.stdout)
    return 0


def print_warnings(plugins, file) -> None:
    """Broken plugins and refused registrations, one line each (shared with `portaft plugins`)."""
    for info in plugins.broken():
        print(f"warning: plugin {info.name!r} ({info.distribution}) is broken: {info.error}", file=file)
    for problem in plugins.problems:
        print(f"warning: {problem}", file=file)
