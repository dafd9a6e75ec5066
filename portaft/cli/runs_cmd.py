"""portaft runs [DIR]: the runs under a folder (default output/), newest first."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("runs", help="list the runs under a folder: status, steps, last loss, when")
    p.add_argument("folder", nargs="?", default="output", metavar="DIR", help="where to look (default: output)")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from portaft.after.runs import find_runs, table
    from portaft.errors import UserError

    root = Path(args.folder)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder. Give the folder your runs' train.output_dir are in (default: "
                        "output).")
    rows = find_runs(root)
    if not rows:
        print(f"portaft: no runs under {root} (a run's folder holds portaft_log.jsonl or portaft_run.json)")
        return 0
    print(table(rows, root))
    return 0
