"""portaft parity RECIPE --backends a,b [--steps N] [--tolerance T] [--save-golden F | --against F]"""

from __future__ import annotations

FAILED = 3  # parity ran and the curves differ more than the tolerance


def add_parser(sub) -> None:
    p = sub.add_parser("parity", help="the same recipe on two backends, loss by loss")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--backends", required=True,
                   help="two targets to compare, e.g. cpu,npu:cpu or cpu,cuda (one with --save-golden/--against)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run (default 20)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="both runs in this (default fp32)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest relative loss difference that passes")
    p.add_argument("--save-golden", metavar="FILE", help="store the (one) target's curve as a golden file")
    p.add_argument("--against", metavar="FILE", help="compare the (one) target with a stored golden curve")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from pathlib import Path

    from portaft.checks import parity
    from portaft.errors import UserError

    targets = [t for t in args.backends.split(",") if t]
    one = bool(args.save_golden or args.against)
    if len(targets) != (1 if one else 2):
        raise UserError("--backends: give two targets (cpu,cuda), or one with --save-golden or --against.")
    for target in targets:
        parity.parse_target(target)
    quiet = lambda _: None  # noqa: E731 (the runs' own chatter would bury the table)
    curves = [parity.run_curve(args.recipe, t, args.steps, args.precision, args.overrides, quiet) for t in targets]
    if args.save_golden:
        parity.save_golden(Path(args.save_golden), curves[0], args.recipe, args.steps, args.precision)
        print(f"portaft: golden curve of {targets[0]} ({len(curves[0].losses)} steps) saved in {args.save_golden}")
        return 0
    if args.against:
        golden, _ = parity.load_golden(Path(args.against))
        curves.append(golden)
    rows, worst, passed = parity.compare(curves[0], curves[1], args.tolerance)
    print(parity.table(rows, (curves[0].label, curves[1].label)))
    verdict = "PASS" if passed else "FAIL"
    print(f"{verdict}: largest relative difference {worst:.3e} over {len(rows)} steps "
          f"(tolerance {args.tolerance:g}, {args.precision})")
    return 0 if passed else FAILED
