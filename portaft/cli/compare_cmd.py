"""portaft compare RUN_A RUN_B ... [--out FILE.png]: loss curves on one chart, the settings that differ."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="finished runs side by side: loss curves and the recipe settings that differ")
    p.add_argument("runs", nargs="*", metavar="RUN", help="output folders of finished runs (their train.output_dir)")
    p.add_argument("--out", default="compare.png", metavar="FILE.png",
                   help="where the chart goes (default: compare.png in the current folder)")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from pathlib import Path

    from portaft.after import compare

    out = Path(args.out)
    compare.check_chart_path(out)
    runs = compare.load_runs(args.runs)
    differing = compare.differing_settings(runs)
    print(compare.comparison_table(runs, differing))
    out.parent.mkdir(parents=True, exist_ok=True)
    compare.loss_chart(runs, differing).savefig(out, dpi=110)
    print(f"portaft: loss curves of {len(runs)} runs saved in {out.resolve()}")
    return 0
