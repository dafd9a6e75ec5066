"""portaft doctor [--json]: versions, known-bad pairings, and a smoke test per available backend."""

from __future__ import annotations

import json

PROBLEMS_FOUND = 3


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="check installed versions, pairings and each backend's device")
    p.add_argument("--json", action="store_true", help="machine-readable output (attach it to a bug report)")
    p.add_argument("--nproc", type=int, metavar="N", help="check for a run of N processes (visible NPUs/GPUs)")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from portaft.checks.doctor import diagnose

    report = diagnose(nproc=args.nproc)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return PROBLEMS_FOUND if report.problems else 0
    print("installed: " + ", ".join(f"{name} {version}" for name, version in report.versions.items()))
    print(f"CANN: {report.cann or 'not found'}")
    if report.ascend is not None:
        smi = report.ascend
        print(f"Ascend: driver {smi['driver'] or 'unknown'}, chips {', '.join(smi['chips']) or 'unknown'}"
              f"{'' if smi['npu_smi'] else ' (npu-smi not found)'}")
    for check in report.backends:
        if check.library:
            print(f"{check.name:<8} library: {check.library.split(': ', 1)[-1]}")
        if not check.available:
            print(f"{check.name:<8} unavailable: {check.reason}")
            continue
        details = [f"smoke test {check.smoke_test}"]
        if check.device_count is not None:
            details.insert(0, f"{check.device_count} device(s)")
        if check.bf16 is not None:
            details.insert(1, f"bf16 {'yes' if check.bf16 else 'no'}")
        print(f"{check.name:<8} available: {', '.join(details)}")
    for problem in report.problems:
        print(f"{'FATAL' if problem.fatal else 'problem'}: {problem.what}\n  fix: {problem.fix}")
    print(f"{len(report.problems)} problem(s) found" if report.problems else "no problems found")
    return PROBLEMS_FOUND if report.problems else 0
